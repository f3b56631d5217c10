"""The tutorial's steps live in the numbered folders beside this file; runner.py runs them."""
