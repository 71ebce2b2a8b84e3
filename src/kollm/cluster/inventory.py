"""The inventory: the nodes and GPUs jobs and the planner may use.

An inventory YAML lists nodes, each with CPUs, memory and GPUs (a card from the planner's
catalogue, or any name with its `memory_gib`):

    nodes:
      - name: gpu-01
        cpus: 32
        memory_gib: 256
        gpus:
          - {card: A100-80GB, count: 4}
          - {card: RTX6000-Ada, memory_gib: 47.5}

Without a file, `local_inventory()` describes this machine: its CPUs, its memory and the CUDA
cards torch sees.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import yaml
from pydantic import Field, ValidationError, model_validator

from kollm.cluster.planner import CARDS, GIB
from kollm.config import StrictModel, format_validation_error


class InventoryError(ValueError):
    """An inventory that cannot be read, or a request it cannot hold."""


class GpuGroup(StrictModel):
    card: str
    """A card of the planner's catalogue (`kollm plan --help`), or any name with `memory_gib`."""
    count: int = Field(1, ge=1)
    """How many of this card the node has."""
    memory_gib: float | None = Field(None, gt=0)
    """Memory of one card (GiB); needed for a card outside the catalogue."""

    @model_validator(mode="after")
    def _known_card(self) -> GpuGroup:
        if self.memory_gib is None and self.card not in CARDS:
            raise ValueError(
                f"unknown card {self.card!r}: give its memory_gib, or one of {', '.join(CARDS)}"
            )
        return self

    @property
    def gib(self) -> float:
        return self.memory_gib if self.memory_gib is not None else CARDS[self.card]


class Node(StrictModel):
    name: str
    """The node's name (a Ray node, or this machine)."""
    cpus: int = Field(ge=1)
    """CPU cores jobs may use."""
    memory_gib: float = Field(gt=0)
    """Memory jobs may use (GiB)."""
    gpus: list[GpuGroup] = Field(default_factory=list)
    """The node's GPUs, by card."""

    def devices(self) -> list[tuple[int, str, float]]:
        """(CUDA index, card, GiB) for every card, in the order CUDA numbers them."""
        out = []
        for group in self.gpus:
            out += [(len(out) + i, group.card, group.gib) for i in range(group.count)]
        return out


class Inventory(StrictModel):
    nodes: list[Node] = Field(min_length=1)
    """The nodes, each with its CPUs, memory and GPUs."""

    def cards(self) -> dict[str, float]:
        """`node/card` -> GiB of one card, for the planner's `fits`."""
        return {f"{n.name}/{g.card}": g.gib for n in self.nodes for g in n.gpus}

    def check(self, cpus: int, gpus: int, memory_gib: float, min_card_gib: float = 0.0) -> None:
        """Raise InventoryError, naming what is short, unless one node holds the request."""
        for node in self.nodes:
            cards = [d for d in node.devices() if d[2] >= min_card_gib]
            if cpus <= node.cpus and memory_gib <= node.memory_gib and gpus <= len(cards):
                return
        most_gpus = max(len(n.devices()) for n in self.nodes)
        most = (
            max(n.cpus for n in self.nodes),
            max(n.memory_gib for n in self.nodes),
        )
        short = []
        if cpus > most[0]:
            short.append(f"{cpus} CPUs (most on a node: {most[0]})")
        if memory_gib > most[1]:
            short.append(f"{memory_gib:g} GiB of memory (most on a node: {most[1]:g})")
        if gpus > most_gpus:
            short.append(f"{gpus} GPUs (most on a node: {most_gpus})")
        elif gpus:
            short.append(f"{gpus} GPUs of at least {min_card_gib:.1f} GiB each")
        raise InventoryError("the job asks for more than the inventory has: " + "; ".join(short))


def load_inventory(path: str | Path) -> Inventory:
    """Read and check an inventory YAML; errors name the YAML path."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise InventoryError(f"{path}: cannot read inventory: {err.strerror}") from err
    except yaml.YAMLError as err:
        raise InventoryError(f"{path}: not valid YAML: {err}") from err
    try:
        return Inventory.model_validate(raw)
    except ValidationError as err:
        raise InventoryError(format_validation_error(path, err, Inventory)) from err


def _memory_gib() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    except (ValueError, OSError):
        return 1.0


def local_inventory() -> Inventory:
    """This machine: its CPUs, memory and the CUDA cards torch sees (none on a CPU host)."""
    gpus: list[GpuGroup] = []
    try:
        import torch

        for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
            props = torch.cuda.get_device_properties(i)
            gpus.append(GpuGroup(card=props.name, memory_gib=props.total_memory / GIB))
    except ImportError:
        pass
    node = Node(name="local", cpus=os.cpu_count() or 1, memory_gib=_memory_gib(), gpus=gpus)
    return Inventory(nodes=[node])


def placements(total_gib: float, inventory: Inventory, utilization: float) -> list[dict]:
    """For each node and card: how many of the card the need takes, and whether the node has
    that many (tensor parallel across a node's cards of one kind)."""
    rows = []
    for node in inventory.nodes:
        for group in node.gpus:
            needed = math.ceil(total_gib / (group.gib * utilization))
            rows.append(
                {
                    "node": node.name,
                    "card": group.card,
                    "count": group.count,
                    "needed": needed,
                    "holds": needed <= group.count,
                }
            )
    return rows


def worker_placement(
    inventory: Inventory, workers: int, gpus_per_worker: int, card_gib: float, cpus_per_worker=1.0
) -> list[dict]:
    """Ray Train workers on the nodes, packed node by node as Ray Train's default (PACK)
    places them: each node takes as many as its cards of at least `card_gib` (in whole
    `gpus_per_worker` groups) and its CPUs allow, in inventory order. One row per node that
    gets any; InventoryError naming the shortfall when the nodes cannot hold them all."""
    rows, left = [], workers
    for node in inventory.nodes:
        cards = [d for d in node.devices() if d[2] >= card_gib]
        fit = int(node.cpus // cpus_per_worker)
        if gpus_per_worker:
            fit = min(fit, len(cards) // gpus_per_worker)
        take = min(fit, left)
        if take:
            used = cards[: take * gpus_per_worker]
            card = "/".join(dict.fromkeys(name for _i, name, _gib in used)) or None
            rows.append(
                {"node": node.name, "workers": take, "gpus": take * gpus_per_worker, "card": card}
            )
            left -= take
    if left:
        need = f"{gpus_per_worker} GPUs of at least {card_gib:.1f} GiB" if gpus_per_worker else ""
        need = need or f"{cpus_per_worker:g} CPUs"
        raise InventoryError(
            f"{workers} Ray workers of {need} each: the inventory holds {workers - left}"
        )
    return rows
