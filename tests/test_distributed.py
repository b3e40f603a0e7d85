"""fit under torchrun: 2 CPU processes (gloo) equal 1 process at the same global batch.

Data parallelism averages gradients: with the global batch B split into two halves B_1, B_2 of
equal size, the gradient of the batch's mean loss is
(1/|B|) sum_{i in B} grad l_i = 1/2 (grad L_{B_1} + grad L_{B_2}), the mean of the two
processes' gradients, which is what DistributedDataParallel computes. So the weights after N
steps must equal those of one process (up to the order of float additions), and an interrupted
2-process run, resumed, must equal the uninterrupted one bit for bit (every process's random
generators are in the checkpoint).
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aigc_lib import checkpoint as ckpt

sys.path.insert(0, str(Path(__file__).parent))
import ddp_worker  # noqa: E402


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(Path(__file__).parent / "ddp_worker.py"), str(folder)],
        env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return ckpt.load_state(folder / "out.safetensors")


def test_two_processes_equal_one_at_the_same_global_batch(two_processes):
    assert two_processes["world"] == 2
    torch.set_num_threads(1)
    single, history = ddp_worker.train()
    gap = max((a - b).abs().max().item() for a, b in
              zip(single.state_dict().values(), two_processes["equal"].values()))
    print(f"max |2 processes - 1 process| over the weights after {ddp_worker.STEPS} steps: "
          f"{gap:.2e}")
    assert gap < 1e-5
    assert two_processes["equal_losses"] == pytest.approx(history.step_losses, abs=1e-5)
    moved = max((a - b).abs().max().item() for a, b in
                zip(ddp_worker.model().state_dict().values(), single.state_dict().values()))
    assert moved > 100 * gap            # training moved the weights far more than that


def test_interrupted_two_process_run_resumes_bit_identically(two_processes):
    assert 0 < two_processes["saved_step"] < 7
    for a, b in zip(two_processes["reference"].values(), two_processes["resumed"].values()):
        assert torch.equal(a, b)


def test_a_batch_the_processes_cannot_split_is_refused(two_processes):
    assert "under 2 processes every batch must split evenly: batch_size=15" in \
        two_processes["error"]
