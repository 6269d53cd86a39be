"""The side-by-side performance benchmark (bench/bench_perf.py): one module per role, each run as
`python -m perf.ROLE` in a process of its own and speaking JSON lines on stdout.

stub            a Cognito stand-in (x-amz-json-1.1 over HTTP/1.1 keep-alive, configurable latency)
driver          a grpc.aio load driver: N callers in closed loop over a window, counts and latencies
baseline_boto3  direct boto3 admin_update_user_attributes calls to the stub, in a loop
baseline_grpc   a bare grpc.aio server answering or aborting the same messages attrgate does
run             starts them all and attrgate, samples /proc, prints the table and writes JSON
"""
