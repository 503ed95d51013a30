"""Generated from the vendored protos/third_party/{envoy,udpa,validate,xds} by scripts/genproto.py. Do not edit."""
