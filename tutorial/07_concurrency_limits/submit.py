from tutorial.waiting import result_of  # result() without its two Prefect 3.9 gaps (step 02)

from tasks import check_stock, send_sms

if __name__ == "__main__":
    # Six calls to a service that takes three at a time.
    futures = [check_stock.delay(f"sku-{n}") for n in range(6)]
    print("submitted 6 runs of check_stock")
    for future in futures:
        print(result_of(future, timeout=120))

    # Five text messages: two at once, then one a second.
    futures = [send_sms.delay(f"+15550100{n:02d}") for n in range(5)]
    print("submitted 5 runs of send_sms")
    for future in futures:
        print(result_of(future, timeout=120))
