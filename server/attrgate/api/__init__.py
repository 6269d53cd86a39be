"""The gRPC edge: protobuf <-> domain, caller identity, errors -> google.rpc.Status."""
