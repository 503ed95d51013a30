"""Generated protobuf and gRPC code for the aigc.gateway API."""
