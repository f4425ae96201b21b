"""Address helpers shared by intake and the pipeline."""

from __future__ import annotations


def base_address(address: str) -> str:
    """``Support+t-12-abc@Example.com`` -> ``support@example.com``: the address without its tag."""
    local, _, domain = address.strip().strip("<>").rpartition("@")
    return f"{local.split('+', 1)[0]}@{domain}".lower()
