"""Generated from the vendored protos/{envoy,udpa,validate,xds} by scripts/genproto.py. Do not edit."""
