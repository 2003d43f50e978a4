"""Our export-friendly IPT against the original (spandrel's port of huawei-noah/Pretrained-IPT)."""

import pytest
import torch

from model_defs.ipt import (
    IPT,
    patches_to_tokens,
    reconcile_arch,
    select_task,
    tokens_to_patches,
)

# The real structure at toy size: 24 px tiles of 3x3 patches (64 tokens of width 8*9 = 72).
TINY = dict(patch_size=24, patch_dim=3, n_feats=8, num_heads=4, num_layers=2)
TASK_SCALES = {"sr-x2": 2, "sr-x3": 3, "sr-x4": 4, "denoise": 1, "derain": 1}
PRETRAIN_SCALES = [2, 3, 4, 1, 1, 1]


def original_with_state(seed: int = 0, **arch):
    """spandrel's IPT and its weights, randomly moved away from their init (biases, norms, embeddings too)."""
    from spandrel.architectures.IPT import IPT as OriginalIPT

    torch.manual_seed(seed)
    original = OriginalIPT(**arch).eval()
    generator = torch.Generator().manual_seed(seed)
    state = {k: v + 0.05 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v for k, v in original.state_dict().items()}
    original.load_state_dict(state, strict=True)
    return original, state


def run_original(original, x: torch.Tensor, task: int = 0) -> torch.Tensor:
    """The original on one tile, task `task`, in [0, 1] (it works in [0, rgb_range])."""
    original.set_scale(task)
    with torch.no_grad():
        return original(x * original.rgb_range) / original.rgb_range


def ours_loaded(state, **arch) -> IPT:
    model = IPT(**arch).eval()
    model.load_state_dict(state, strict=True)
    return model


def tiles(batch: int, size: int = 24, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_patch_tokens_equal_unfold_and_fold():
    x = torch.randn(2, 5, 12, 9)
    tokens = patches_to_tokens(x, 3)
    torch.testing.assert_close(tokens, torch.nn.functional.unfold(x, 3, stride=3).transpose(1, 2), atol=0, rtol=0)
    folded = torch.nn.functional.fold(tokens.transpose(1, 2), (12, 9), 3, stride=3)
    torch.testing.assert_close(tokens_to_patches(tokens, 3, (12, 9)), folded, atol=0, rtol=0)


@pytest.mark.parametrize("task", sorted(TASK_SCALES))
def test_matches_original(task):
    scale = TASK_SCALES[task]
    original, state = original_with_state(seed=sorted(TASK_SCALES).index(task), scale=[scale], **TINY)
    ours = ours_loaded(state, scale=scale, **TINY)
    assert list(ours.state_dict()) == list(state)
    x = tiles(2)
    with torch.no_grad():
        actual = ours(x)
    assert actual.shape == (2, 3, 24 * scale, 24 * scale)
    torch.testing.assert_close(actual, run_original(original, x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("flags", [dict(pos_every=True), dict(no_pos=True), dict(mlp=False), dict(no_norm=True)], ids=lambda f: next(iter(f)))
def test_structure_flags_match_original(flags):
    original, state = original_with_state(seed=5, scale=[2], **TINY, **flags)
    ours = ours_loaded(state, scale=[2], **TINY, **flags)
    assert list(ours.state_dict()) == list(state)
    x = tiles(1)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), run_original(original, x), atol=1e-5, rtol=0)


def test_matches_spandrels_own_loader_and_call():
    """spandrel detects the hyperparameters (num_heads is fixed at 12 there) and clamps its output."""
    from spandrel import ModelLoader

    arch = dict(patch_size=24, patch_dim=3, n_feats=4, num_heads=12, num_layers=1)
    _, state = original_with_state(seed=7, scale=[2], **arch)
    descriptor = ModelLoader().load_from_state_dict(state)
    ours = ours_loaded(state, **reconcile_arch({**arch, "scale": 2}, state))
    x = tiles(1)
    with torch.no_grad():
        torch.testing.assert_close(ours(x).clamp(0, 1), descriptor(x), atol=1e-5, rtol=0)


def test_batch_of_two_equals_two_single_tiles():
    """Tiles do not mix. In float32 the batch size changes the matmul blocking, hence the rounding
    (by up to ~2e-5 here, and identically in the original), so exactness is checked in float64."""
    _, state = original_with_state(seed=3, scale=[3], **TINY)
    ours = ours_loaded(state, scale=3, **TINY)
    x = tiles(2, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), torch.cat([ours(x[:1]), ours(x[1:])]), atol=1e-4, rtol=0)
        ours, x = ours.double(), x.double()
        torch.testing.assert_close(ours(x), torch.cat([ours(x[:1]), ours(x[1:])]), atol=1e-12, rtol=0)


def test_other_tile_sizes_are_refused():
    ours = IPT(scale=2, **TINY).eval()
    with pytest.raises(ValueError, match="24x24 tiles"):
        ours(torch.rand(1, 3, 27, 27))


def test_select_task_matches_original_on_every_task():
    original, state = original_with_state(seed=11, scale=PRETRAIN_SCALES, num_queries=6, **TINY)
    x = tiles(1, seed=2)
    for task, scale in enumerate(PRETRAIN_SCALES):
        selected, unused = select_task(state, task, num_tasks=6)
        left_out = {k for k in state if k.split(".")[0] in ("head", "tail") and int(k.split(".")[1]) != task}
        assert set(unused) == left_out
        assert selected["body.query_embed.weight"].shape[0] == 1
        torch.testing.assert_close(selected["body.query_embed.weight"][0], state["body.query_embed.weight"][task], atol=0, rtol=0)
        ours = ours_loaded(selected, scale=scale, **reconcile_arch(dict(TINY), selected))
        # same layout as the original built for this one task
        assert list(selected) == list(IPT(scale=scale, **TINY).state_dict())
        with torch.no_grad():
            torch.testing.assert_close(ours(x), run_original(original, x, task), atol=1e-5, rtol=0)


def test_select_task_reports_each_left_out_key_with_its_task():
    _, state = original_with_state(seed=12, scale=[2, 3, 1], num_queries=3, **TINY)
    selected, unused = select_task(state, 1)
    assert sorted(unused) == sorted(k for k in state if k.startswith(("head.0.", "head.2.", "tail.0.", "tail.2.")))
    assert unused["head.0.0.weight"] == "head of task 0 (x2); this export is task 1"
    assert unused["tail.2.1.bias"] == "tail of task 2 (x1); this export is task 1"
    assert torch.equal(selected["tail.0.0.0.weight"], state["tail.1.0.0.weight"])  # the x3 conv: 9 * 8 outputs
    assert selected["tail.0.0.0.weight"].shape[0] == 72


def test_select_task_on_a_single_task_file_keeps_everything():
    _, state = original_with_state(seed=13, scale=[4], **TINY)
    selected, unused = select_task(state, 0)
    assert unused == {} and list(selected) == list(state)
    assert all(selected[k] is state[k] for k in state if k != "body.query_embed.weight")


def test_select_task_refuses_what_the_file_does_not_have():
    _, state = original_with_state(seed=14, scale=[2, 1], num_queries=2, **TINY)
    with pytest.raises(ValueError, match="out of range"):
        select_task(state, 2)
    with pytest.raises(ValueError, match="expected 6 tasks"):
        select_task(state, 0, num_tasks=6)
    one_query = {**state, "body.query_embed.weight": state["body.query_embed.weight"][:1]}
    with pytest.raises(ValueError, match="no query row"):
        select_task(one_query, 1)


def test_reconcile_arch_reads_rgb_range_and_query_rows():
    _, state = original_with_state(seed=15, scale=[1], rgb_range=1, num_queries=2, **TINY)
    arch = reconcile_arch({**TINY, "scale": 1}, state)
    assert arch["rgb_range"] == 1 and arch["num_queries"] == 2
    ours_loaded(state, **arch)  # loads strictly; query row 0 is used, as by the original for one task


def test_traced_onnx_has_no_fold_unfold_or_shape_ops_and_matches():
    import onnxruntime as ort

    from deploytool.build.export import trace

    _, state = original_with_state(seed=16, scale=[2], **TINY)
    ours = ours_loaded(state, scale=2, **TINY)
    x = tiles(2, seed=5)
    graph = trace(ours, x)
    ops = {node.op_type for node in graph.graph.node}
    assert not ops & {"Col2Im", "Im2Col", "Unfold", "Shape", "Gather", "Dropout"}, ops
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(actual), ours(x), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_full_size_x4_matches_original():
    """The official configuration (every released file: 48 px, 64 features, 12 heads, 12 layers)."""
    original, state = original_with_state(seed=17, scale=[4])
    ours = ours_loaded(state, scale=4)
    assert list(ours.state_dict()) == list(state)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in state.items()}
    assert state["body.query_embed.weight"].shape == (1, 576 * 256)
    x = tiles(1, size=48)
    with torch.no_grad():
        actual = ours(x)
    assert actual.shape == (1, 3, 192, 192)
    torch.testing.assert_close(actual, run_original(original, x), atol=1e-5, rtol=0)
