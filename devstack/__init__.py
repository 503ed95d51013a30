"""The development stack behind `scripts/dev` (`python -m devstack` from the checkout).

Not part of the installed gateway: it drives the checkout's tools (the test bed, oidc-provider,
nginx, the Go-built REST bridge, the dashboard build) around the installed `aigc-gateway` and
`aigcctl` commands, so it lives beside them, outside the runtime package.
"""
