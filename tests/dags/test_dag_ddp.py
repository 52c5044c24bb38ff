"""DDP launched by the DAG: with `train.nproc_per_node=2` the training task runs torchrun (2 CPU processes,
gloo) over the pipeline's own entry point, and the run goes on from the model rank 0 wrote."""

from __future__ import annotations

import json

import pytest
from e2e_helpers import LOGICAL, REPO

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def test_dag_trains_with_torchrun_two_processes(airflow_db, tiny_landing, tmp_home, fast_overrides):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    conf = {"landing": str(tiny_landing), "text__enabled": False, "train__epochs": 1, "dry_run": True,
            "train__baselines": False, "overrides": [*fast_overrides, "train.nproc_per_node=2",
                                                              "train.gbdt_baselines=false"]}
    dr = bag.dags["mtl_retrain"].test(logical_date=LOGICAL, run_conf=conf)
    assert str(dr.state) == "success"
    run = tmp_home / "runs" / LOGICAL.date().isoformat()
    meta = json.loads((run / "models" / "mtl" / "meta.json").read_text())
    assert meta["world_size"] == 2, "the DAG's training task did not run over two processes"
    assert json.loads((run / "launch" / "mtl.config.json").read_text())["train"]["nproc_per_node"] == 2
    assert (run / "evaluation.json").is_file()
