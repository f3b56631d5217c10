from prefect.task_worker import serve

from tasks import build_invoice, charge_card

if __name__ == "__main__":
    serve(build_invoice, charge_card)
