"""Regions of the local mesh: each a full set of planes on its own ports and its own data.

The mesh config describes the default region; region i (in `mesh.regions` order) gets the
same planes with every port shifted by i * `mesh.port_stride`, its Milvus data and corpus log
in a folder of its own, and these links:

* its gateway reaches retrieval through its own Envoy internal listener, on 127.0.0.1 (the
  edge's host; the local region's retrieval first, then the others by priority), and Triton
  directly at `triton.host`: its own first, then the other regions' in order
  (`gateway.triton_fallback_targets`);
* its retrieval embeds with its own Triton; the first region's retrieval is the governance
  point (writes, corpus versions), every other region's a replica pulling from it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from services.config.mesh import MeshConfig


@dataclass(frozen=True)
class Region:
    name: str
    priority: int  # Envoy priority: 0 for the default region
    config: MeshConfig  # this region's planes

    @property
    def gateway_target(self) -> str:
        return f"{self.config.gateway.host}:{self.config.gateway.port}"

    @property
    def retrieval_target(self) -> str:
        return f"{self.config.retrieval.host}:{self.config.retrieval.port}"

    @property
    def triton_target(self) -> str:
        return f"{self.config.triton.host}:{self.config.triton.grpc_port}"


def _in_folder(path: str, region: str) -> str:
    """data/milvus.db -> data/<region>/milvus.db; a server URI is left as it is."""
    if "://" in path:
        return path
    p = Path(path)
    return str(p.parent / region / p.name)


def _shifted(config: MeshConfig, name: str, shift: int) -> MeshConfig:
    # `control` is left as it is: every region's gateways share the one store (redis_port).
    g, r, t, e = config.gateway, config.retrieval, config.triton, config.edge
    triton = dataclasses.replace(
        t,
        grpc_port=t.grpc_port + shift,
        http_port=t.http_port + shift,
        metrics_port=t.metrics_port + shift,
    )
    edge = dataclasses.replace(e, internal_port=e.internal_port + shift)
    triton_target = f"{triton.host}:{triton.grpc_port}"
    remote = "://" in r.milvus_uri
    retrieval = dataclasses.replace(
        r,
        port=r.port + shift,
        metrics_port=r.metrics_port + shift if r.metrics_port else 0,
        region=name,
        triton_target=triton_target,
        milvus_uri=_in_folder(r.milvus_uri, name),
        # One Milvus server holds each region's replica in a collection of its own.
        collection=f"{r.collection}_{name.replace('-', '_')}" if remote else r.collection,
        corpus_log=_in_folder(r.corpus_log, name),
        hot_snapshot=r.hot_snapshot and _in_folder(r.hot_snapshot, name),
    )
    gateway = dataclasses.replace(
        g,
        port=g.port + shift,
        openai_port=g.openai_port + shift,
        metrics_port=g.metrics_port + shift if g.metrics_port else 0,
        region=name,
        triton_target=triton_target,
        retrieval_target=f"127.0.0.1:{edge.internal_port}",
    )
    return dataclasses.replace(
        config, edge=edge, triton=triton, retrieval=retrieval, gateway=gateway
    )


def regions(config: MeshConfig) -> list[Region]:
    """Every region of `config`, in failover order, with the links between them."""
    stride = config.mesh.port_stride
    planes = [
        Region(name, i, _shifted(config, name, i * stride))
        for i, name in enumerate(config.mesh.regions)
    ]
    primary = planes[0].retrieval_target
    linked = []
    for region in planes:
        c = region.config
        others = [o.triton_target for o in planes if o is not region]
        gateway = dataclasses.replace(c.gateway, triton_fallback_targets=others)
        retrieval = dataclasses.replace(
            c.retrieval, primary_target="" if region.priority == 0 else primary
        )
        linked.append(
            Region(
                region.name,
                region.priority,
                dataclasses.replace(c, gateway=gateway, retrieval=retrieval),
            )
        )
    return linked


def first(config: MeshConfig, count: int) -> MeshConfig:
    """`config` with only its first `count` regions (`ragmesh up --regions N`)."""
    names = config.mesh.regions
    if not 1 <= count <= len(names):
        raise ValueError(
            f"--regions: {count} is not 1..{len(names)}; mesh.regions names {', '.join(names)}"
        )
    mesh = dataclasses.replace(config.mesh, regions=names[:count])
    return dataclasses.replace(config, mesh=mesh)
