"""The AIGC Gateway test bed (see testbed/testbed and docs/testbed.md)."""
