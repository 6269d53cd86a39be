"""The allowed path's reference: direct boto3 admin_update_user_attributes calls to the stub, from
a few threads in closed loop (one client, its connection pool as large as the threads). Its own CPU
per call (measured from /proc by the parent) is what calling Cognito with boto3 costs.

    python -m perf.baseline_boto3 --endpoint http://127.0.0.1:PORT [--threads 8]

Speaks the driver's protocol (perf/driver.py): {"ready": true}, then a window on stdin, then the
result line.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections import Counter
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from perf.procstat import raise_nofile


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="direct boto3 calls in a loop")
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--pool", default="us-east-1_bench")
    parser.add_argument("--username", default="bench-user")
    args = parser.parse_args(argv)
    raise_nofile()
    client = boto3.client(
        "cognito-idp",
        region_name="us-east-1",
        endpoint_url=args.endpoint,
        config=Config(max_pool_connections=args.threads, retries={"mode": "standard"}),
    )
    attributes = [{"Name": "given_name", "Value": "Ada"}]

    def call() -> None:
        client.admin_update_user_attributes(
            UserPoolId=args.pool, Username=args.username, UserAttributes=attributes
        )

    call()  # the client's lazy parts (endpoint resolution, connection) before the window
    print(json.dumps({"ready": True}), flush=True)
    window = json.loads(sys.stdin.readline())
    t0, t1 = float(window["t0"]), float(window["t1"])
    lock = threading.Lock()
    codes: Counter[str] = Counter()
    latencies_us: dict[str, list[int]] = {}
    outside = [0]

    def loop() -> None:
        while time.time() < t1:
            started = time.perf_counter()
            try:
                call()
                code = "OK"
            except ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code", "ClientError"))
            except BotoCoreError as exc:
                code = type(exc).__name__
            took = time.perf_counter() - started
            now = time.time()
            with lock:
                if t0 <= now <= t1:
                    codes[code] += 1
                    latencies_us.setdefault(code, []).append(int(took * 1e6))
                else:
                    outside[0] += 1

    threads = [threading.Thread(target=loop) for _ in range(args.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result: dict[str, Any] = {
        "in_flight": args.threads,
        "window": [t0, t1],
        "codes": dict(codes),
        "reasons": {},
        "messages": {},
        "outside_window": outside[0],
        "trailer_bytes": None,
        "latencies_us": latencies_us,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
