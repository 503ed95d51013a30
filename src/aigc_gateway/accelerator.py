"""What a template runs on (CPU, a whole GPU, a share of one, ECI), read once from its pod template.

Three readers need the same answer: the template service's catalog entry (the `Accelerator` of a Template),
the instance service's Instance message, and its quotas (a running instance costs what its template's first
container asks for). Each used to read the manifest itself, and the readings had drifted apart (one parsed
counts as Kubernetes quantities, the other with ``int()``; one showed an ECI instance type on non-ECI pods).

The rule: the first container's resources, each from ``limits`` over ``requests``; ``nvidia.com/gpu`` units
make it a GPU template, else ``aliyun.com/gpu-mem`` GiB a shared-GPU one, else CPU (both counts are kept: a pod
asking for both holds both, and quotas count both); a count that is no plain integer reads as none (the template
rules report it as unusable). ECI when the pod template carries the
Alibaba ECI label ``true``; its instance type is the ``eci-use-specs`` annotation. Pure: no I/O.
"""
from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .quantity import QuantityError, plain_count

GPU = "nvidia.com/gpu"
GPU_MEMORY = "aliyun.com/gpu-mem"
ECI_LABEL = "alibabacloud.com/eci"
ECI_SPECS_ANNOTATION = "k8s.aliyun.com/eci-use-specs"


class Kind(str, enum.Enum):
    """The `Accelerator.Type` values (common.proto), by name."""
    UNSPECIFIED = "TYPE_UNSPECIFIED"  # no container: nothing to say
    CPU = "CPU"
    GPU = "GPU"
    SHARED_GPU = "SHARED_GPU"


@dataclass(frozen=True)
class Accelerator:
    kind: Kind
    cpu: str = ""
    memory: str = ""
    gpu_count: int = 0
    gpu_memory_gib: int = 0
    eci: bool = False
    eci_instance_type: str = ""

    @property
    def needs_gpu(self) -> bool:
        return self.kind in (Kind.GPU, Kind.SHARED_GPU)


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def pod_template(gss: Mapping[str, Any]) -> Mapping[str, Any]:
    return _dict(_dict(gss.get("spec")).get("gameServerTemplate"))


def containers(gss: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [c for c in _dict(pod_template(gss).get("spec")).get("containers") or [] if isinstance(c, Mapping)]


def resource(container: Mapping[str, Any], key: str) -> Any:
    """One resource of a container: its limit, else its request, else None."""
    resources = _dict(container.get("resources"))
    limits, requests = _dict(resources.get("limits")), _dict(resources.get("requests"))
    return limits.get(key, requests.get(key))


def count(value: Any) -> int:
    """A GPU count or GiB of GPU memory; 0 when missing or no plain count."""
    try:
        return plain_count(value) if value is not None else 0
    except QuantityError:
        return 0


def accelerator_of(gss: Mapping[str, Any]) -> Accelerator:
    meta = _dict(pod_template(gss).get("metadata"))
    eci = str(_dict(meta.get("labels")).get(ECI_LABEL, "")).lower() == "true"
    eci_type = str(_dict(meta.get("annotations")).get(ECI_SPECS_ANNOTATION) or "") if eci else ""
    found = containers(gss)
    if not found:
        return Accelerator(Kind.UNSPECIFIED, eci=eci, eci_instance_type=eci_type)
    first = found[0]
    gpus, gpu_memory = count(resource(first, GPU)), count(resource(first, GPU_MEMORY))
    kind = Kind.GPU if gpus else Kind.SHARED_GPU if gpu_memory else Kind.CPU
    cpu, memory = resource(first, "cpu"), resource(first, "memory")
    return Accelerator(kind, "" if cpu is None else str(cpu), "" if memory is None else str(memory),
                       gpus, gpu_memory, eci, eci_type)
