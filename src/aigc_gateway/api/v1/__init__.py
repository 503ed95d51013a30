"""Generated from protos/aigc/gateway/v1 by scripts/genproto.py. Do not edit."""
