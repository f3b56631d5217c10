from prefect.task_worker import serve

from tasks import render_invoice, send_receipt

if __name__ == "__main__":
    serve(send_receipt, render_invoice)
