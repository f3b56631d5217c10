from prefect.task_worker import serve

from tasks import add, build_invoice, charge_card

if __name__ == "__main__":
    serve(add, build_invoice, charge_card)
