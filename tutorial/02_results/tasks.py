import time

from prefect import task
from pydantic import BaseModel


class Invoice(BaseModel):
    order_id: int
    total_cents: int
    currency: str = "EUR"


@task
def build_invoice(order_id: int, prices_cents: list[int]) -> Invoice:
    time.sleep(2)  # stands in for a slow PDF renderer
    return Invoice(order_id=order_id, total_cents=sum(prices_cents))


@task
def charge_card(order_id: int, card: str) -> str:
    if card.startswith("0000"):
        raise ValueError(f"card {card} declined for order {order_id}")
    return f"order {order_id} charged"
