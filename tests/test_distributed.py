"""The model with its fused ops under torch.distributed: DDP and FSDP with 2 CPU ranks on gloo, SyncBatchNorm.

What makes "the same gradients as one process on the concatenated batch" exactly true: every loss is a mean over
samples and DDP/FSDP average the gradients of equal shards, so the sum is the same - as long as no layer mixes
samples. BatchNorm in training mode does (batch statistics), and under DDP it stays per-rank, as in the official
training: so the concatenated-batch comparison runs with BatchNorm in eval mode, and training-mode BatchNorm is
checked for what it is, the average of the per-rank single-process gradients (and each rank's running statistics
from its own shard). With nn.SyncBatchNorm the statistics are global and the concatenated-batch identity holds in
training too, but torch synchronises only GPU tensors (it raises for CPU ones): that case needs 2 GPUs.
"""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import transxnet_ops
from transxnet_ops.models import TransXNet, official_transxnet_t, transxnet_t
from utils import rel_err

WORLD = 2
ARCH = dict(layers=[1, 1, 1, 1], embed_dims=[16, 32, 48, 64], kernel_size=[7, 5, 3, 3], num_groups=[2, 3, 2, 4],
            sr_ratio=[8, 4, 2, 1], num_heads=[1, 2, 3, 4], mlp_ratios=[2, 2, 2, 2])
BACKEND = "cpu" if "cpu" in transxnet_ops.available_backends("cpu") else "reference"


def make_model(dtype, backend=BACKEND):
    torch.manual_seed(0)
    model = TransXNet(ARCH, image_size=32, num_classes=10, backend=backend).to(dtype)
    with torch.no_grad():  # visible layer scales and position encodings: every token mixer moves the loss
        for name, p in model.named_parameters():
            if "layer_scale" in name or "relative_pos_enc" in name:
                p.normal_(0, 0.5)
    return model


def loss_fn(out):
    """A mean over samples (so that averaging the gradients of equal shards gives the full-batch gradient)."""
    w = torch.linspace(-1, 1, out.shape[1], dtype=out.dtype, device=out.device)
    return (out * w).sum(1).mean()


def grads_of(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def single_process(x, train):
    model = make_model(x.dtype).train(train)
    loss_fn(model(x)).backward()
    return grads_of(model), model.state_dict()


# ------------------------------------------------------------------------------------------------ workers
def _worker(rank, rendezvous, out_dir, device):
    torch.set_num_threads(1)
    backend = "gloo" if device == "cpu" else "nccl"
    if device == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"file://{rendezvous}", rank=rank, world_size=WORLD)
    try:
        x = torch.load(os.path.join(out_dir, "input.pt")).chunk(WORLD)[rank].to(device)
        results = {}
        if device == "cpu":
            results.update(_ddp_cases(x))
            results.update(_fsdp_case(x))
        else:
            results.update(_sync_bn_case(x))
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _ddp_cases(x):
    results = {}
    # BatchNorm in eval mode: the concatenated-batch identity; one SGD step on top
    model = make_model(x.dtype).eval()
    ddp = DDP(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    loss_fn(ddp(x)).backward()
    results["ddp_eval_grads"] = grads_of(model)
    opt.step()
    results["ddp_eval_params"] = {n: p.detach().clone() for n, p in model.named_parameters()}
    # BatchNorm in training mode, per rank (officially): the average of the per-rank gradients
    model = make_model(x.dtype).train()
    ddp = DDP(model)
    loss_fn(ddp(x)).backward()
    results["ddp_train_grads"] = grads_of(model)
    results["ddp_train_state"] = {k: v.clone() for k, v in model.state_dict().items()}
    return results


def _fsdp_case(x):
    """FSDP2 (fully_shard) per block and at the root; BatchNorm in eval mode. Gradients are sharded DTensors."""
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
    except ImportError as exc:
        return {"fsdp_error": f"FSDP2 unavailable: {exc}"}
    model = make_model(x.dtype).eval()
    mesh = init_device_mesh("cpu", (WORLD,))
    for stage in (0, 2, 4, 6):
        for block in model.network[stage]:
            fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    loss_fn(model(x)).backward()
    return {"fsdp_eval_grads": {n: p.grad.full_tensor().detach().clone() for n, p in model.named_parameters()}}


def _sync_bn_case(x):
    model = nn.SyncBatchNorm.convert_sync_batchnorm(make_model(x.dtype)).cuda().train()
    ddp = DDP(model, device_ids=[x.device.index])
    loss_fn(ddp(x)).backward()
    return {"sync_bn_train_grads": {n: g.cpu() for n, g in grads_of(model).items()}}


def run_ranks(tmp_path, x, device):
    torch.save(x, tmp_path / "input.pt")
    mp.start_processes(_worker, args=(str(tmp_path / "rendezvous"), str(tmp_path), device), nprocs=WORLD,
                       start_method="spawn")
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]


def assert_grads_close(grads, expected, tol=1e-9):
    """Per tensor; a gradient that vanishes exactly (a bias right before a training-mode BatchNorm) is held to a
    floor of 1e-6 of the whole gradient's norm."""
    assert list(grads) == list(expected)
    total = torch.cat([g.flatten() for g in expected.values()]).norm()
    for name, g in grads.items():
        assert torch.isfinite(g).all(), name
        assert (g - expected[name]).norm() <= tol * max(expected[name].norm(), 1e-6 * total), name


# ------------------------------------------------------------------------------------------------ tests
@pytest.fixture(scope="module")
def cpu_ranks(tmp_path_factory):
    """One spawn of 2 gloo ranks runs every CPU case (process start-up dominates). Float64, so that the identities
    are checked to 1e-9 and not blurred by float32 summation order (batch shards, thread counts)."""
    torch.manual_seed(1)
    x = torch.randn(2 * WORLD, 3, 32, 32, dtype=torch.float64)
    return x, run_ranks(tmp_path_factory.mktemp("ddp"), x, "cpu")


def test_ddp_matches_one_process_on_the_concatenated_batch(cpu_ranks):
    x, ranks = cpu_ranks
    expected, _ = single_process(x, train=False)
    for rank in ranks:
        assert_grads_close(rank["ddp_eval_grads"], expected)
    # and the SGD step that follows: every rank holds the same parameters as one process would
    model = make_model(x.dtype).eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn(model(x)).backward()
    opt.step()
    for name, p in model.named_parameters():
        for rank in ranks:
            assert rel_err(rank["ddp_eval_params"][name], p.detach()) < 1e-12, name


def test_ddp_training_mode_batchnorm_stays_per_rank(cpu_ranks):
    x, ranks = cpu_ranks
    per_rank = [single_process(shard, train=True) for shard in x.chunk(WORLD)]
    mean = {n: sum(g[n] for g, _ in per_rank) / WORLD for n in per_rank[0][0]}
    for r, rank in enumerate(ranks):
        assert_grads_close(rank["ddp_train_grads"], mean)
        state = per_rank[r][1]  # running statistics from this rank's own shard
        for k, v in rank["ddp_train_state"].items():
            if "running" in k:
                torch.testing.assert_close(v, state[k], rtol=1e-9, atol=1e-15, msg=k)  # some means are ~1e-17


def test_fsdp_matches_one_process_on_the_concatenated_batch(cpu_ranks):
    x, ranks = cpu_ranks
    if "fsdp_error" in ranks[0]:
        pytest.skip(ranks[0]["fsdp_error"])
    expected, _ = single_process(x, train=False)
    for rank in ranks:
        assert_grads_close(rank["fsdp_eval_grads"], expected)


@pytest.mark.skipif(torch.cuda.device_count() < 2,
                    reason="SyncBatchNorm synchronises only GPU tensors (torch raises for CPU ones): needs 2 GPUs")
def test_sync_batchnorm_training_matches_one_process_on_the_concatenated_batch(tmp_path):
    torch.manual_seed(1)
    x = torch.randn(2 * WORLD, 3, 32, 32)
    ranks = run_ranks(tmp_path, x, "cuda")
    model = make_model(x.dtype).cuda().train()
    loss_fn(model(x.cuda())).backward()
    expected = {n: g.cpu() for n, g in grads_of(model).items()}
    for rank in ranks:
        assert_grads_close(rank["sync_bn_train_grads"], expected, tol=1e-4)


def test_convert_sync_batchnorm():
    """Every BatchNorm becomes a SyncBatchNorm (the IDConv/OSRA ConvBN ones too), the official state_dict still
    loads strictly, and without a process group the converted model computes what the original does."""
    model = transxnet_t(num_classes=10, backend=BACKEND)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    official = official_transxnet_t(num_classes=10)
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(transxnet_t(num_classes=10, backend=BACKEND))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in converted.modules())
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in converted.modules()) == n_bn
    converted.load_state_dict(official.state_dict(), strict=True)
    model.load_state_dict(official.state_dict(), strict=True)
    x = torch.randn(2, 3, 48, 48)
    for train in (False, True):
        model.train(train), converted.train(train)
        out, expected = converted(x), model(x)
        # float32: in eval the plain model folds its BatchNorms into the 1x1 convs (a batched matmul at these tiny
        # maps, K up to 1792) and the converted one cannot fold SyncBatchNorms: two summation orders, ~4e-6 apart
        assert rel_err(out, expected) < 1e-5
    assert list(converted.state_dict()) == list(model.state_dict())
