"""`PoolIndex`: construction, validation, parquet round trip, fingerprint."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from lead_lightning import PoolIndex
from lead_lightning.pool import POOL_SCHEMA_VERSION

CLUSTERS = [0, 1, 0, 2, 1, 2]
IU0 = [1.0, 2.5, 0.0, 3.25, 0.5, 7.0]
GROUPS = ["b", "a", "b", "c", "a", "a"]


@pytest.mark.parametrize("kind", ["list", "numpy", "tensor"])
def test_construction_from_lists_numpy_and_tensors(kind):
    conv = {
        "list": lambda x: list(x),
        "numpy": np.asarray,
        "tensor": torch.tensor,
    }[kind]
    pool = PoolIndex(clusters=conv(CLUSTERS), iu0=conv(IU0), groups=conv([1, 0, 1, 2, 0, 0]))
    assert len(pool) == 6
    assert pool.num_clusters == 3
    assert pool.num_groups == 3
    assert pool.clusters.dtype == torch.int16 and pool.clusters.tolist() == CLUSTERS
    assert pool.iu0.dtype == torch.float32 and pool.iu0.tolist() == IU0
    assert pool.groups.dtype == torch.int16 and pool.groups.tolist() == [1, 0, 1, 2, 0, 0]
    assert pool.group_names == [0, 1, 2]
    assert pool.cluster_sizes().tolist() == [2, 2, 2]
    assert pool.ifd is None and pool.n_response_tokens is None


def test_float_clusters_with_whole_values_are_accepted():
    pool = PoolIndex(clusters=np.array([0.0, 1.0, 1.0]), iu0=[1.0, 1.0, 1.0])
    assert pool.clusters.dtype == torch.int16 and pool.clusters.tolist() == [0, 1, 1]


def test_no_groups_means_one_group():
    pool = PoolIndex(clusters=CLUSTERS, iu0=IU0)
    assert pool.num_groups == 1 and pool.group_names == ["all"]
    assert pool.groups.tolist() == [0] * 6


def test_string_groups_are_mapped_and_names_kept():
    pool = PoolIndex(clusters=CLUSTERS, iu0=IU0, groups=GROUPS)
    assert pool.group_names == ["a", "b", "c"]
    assert all(type(n) is str for n in pool.group_names)
    assert pool.groups.tolist() == [1, 0, 1, 2, 0, 0]
    assert [pool.group_names[g] for g in pool.groups.tolist()] == GROUPS


def test_optional_columns_are_kept():
    pool = PoolIndex(clusters=CLUSTERS, iu0=IU0, ifd=[0.5] * 6, n_response_tokens=np.arange(6))
    assert pool.ifd is not None and pool.ifd.tolist() == [0.5] * 6
    assert pool.n_response_tokens is not None and pool.n_response_tokens.tolist() == list(range(6))
    assert pool.n_response_tokens.dtype == torch.int32


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(clusters=[0, 1, 1], iu0=[1.0, 2.0]), r"one entry per example; got lengths .*'iu0': 2"),
        (
            dict(clusters=[0, 1], iu0=[1.0, 2.0], groups=["a"]),
            r"one entry per example; got lengths .*'groups': 1",
        ),
        (dict(clusters=[0, 1], iu0=[1.0, 2.0], ifd=[1.0]), r"one entry per example; got lengths .*'ifd': 1"),
        (
            dict(clusters=[0, 1], iu0=[1.0, 2.0], n_response_tokens=[1, 2, 3]),
            r"one entry per example; got lengths .*'n_response_tokens': 3",
        ),
        (dict(clusters=[], iu0=[]), r"The pool is empty"),
        (dict(clusters=np.array([], dtype=np.int64), iu0=np.array([])), r"The pool is empty"),
        (dict(clusters=[0, 1], iu0=[1.0, -0.5]), r"`iu0` must be finite and >= 0 .*first at id 1: .*-0\.5"),
        (
            dict(clusters=[0, 1], iu0=[float("nan"), 1.0]),
            r"`iu0` must be finite and >= 0 .*first at id 0: .*nan",
        ),
        (
            dict(clusters=[0, 1], iu0=[1.0, float("inf")]),
            r"`iu0` must be finite and >= 0 .*first at id 1: .*inf",
        ),
        (dict(clusters=[0, 2, 2], iu0=[1.0] * 3), r"none empty; cluster\(s\) \[1\] have no example \(K=3\)"),
        (dict(clusters=[1, 1], iu0=[1.0] * 2), r"cluster\(s\) \[0\] have no example"),
        (dict(clusters=[0, -1], iu0=[1.0] * 2), r"`clusters` must be >= 0, got min -1"),
        (
            dict(clusters=[0.0, 0.5], iu0=[1.0] * 2),
            r"`clusters` must hold integer cluster ids, got dtype float64",
        ),
        (dict(clusters=[0.0, float("nan")], iu0=[1.0] * 2), r"`clusters` must hold integer cluster ids"),
        (dict(clusters=["x", "y"], iu0=[1.0] * 2), r"`clusters` must hold integer cluster ids"),
        (
            dict(clusters=[[0, 1], [1, 0]], iu0=[1.0] * 2),
            r"`clusters` must be one-dimensional .*shape \(2, 2\)",
        ),
        (dict(clusters=[0, 1], iu0=[[1.0, 2.0]]), r"`iu0` must be one-dimensional .*shape \(1, 2\)"),
        (dict(clusters=[0, 1], iu0=[1.0, 2.0], groups=[["a"], ["b"]]), r"`groups` must be one-dimensional"),
        (
            dict(clusters=torch.zeros(2, 1, dtype=torch.long), iu0=[1.0, 2.0]),
            r"`clusters` must be one-dimensional",
        ),
        (dict(clusters=5, iu0=[1.0]), r"`clusters` must be one-dimensional .*shape \(\)"),
    ],
)
def test_validation_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PoolIndex(**kwargs)


def test_iu0_error_prints_a_plain_number():
    with pytest.raises(ValueError, match=r"first at id 0: nan\.$"):
        PoolIndex(clusters=[0, 1], iu0=[float("nan"), 1.0])


def test_bfloat16_tensor_input():
    pool = PoolIndex(clusters=torch.tensor([0, 1]), iu0=torch.tensor([1.0, 2.5]).bfloat16())
    assert pool.iu0.tolist() == [1.0, 2.5]


def test_too_many_clusters():
    with pytest.raises(ValueError, match=r"At most 32767 clusters are supported, got 32768"):
        PoolIndex(clusters=np.arange(32768), iu0=np.zeros(32768))


@pytest.mark.parametrize("with_optional", [False, True])
@pytest.mark.parametrize("groups", [None, GROUPS, [3, 1, 3, 7, 1, 1]])
def test_save_load_round_trip(tmp_path, groups, with_optional):
    extra = dict(
        ifd=[0.25, 1.5, 0.75, float("nan"), 0.0, 2.0],
        n_response_tokens=[5, 0, 7, 1, 2, 300],
        ref_loss=[0.5, 0.0, 1.25, 3.0, 0.75, 2.5],
    )
    pool = PoolIndex(clusters=CLUSTERS, iu0=IU0, groups=groups, **(extra if with_optional else {}))
    path = pool.save(tmp_path / "sub" / "pool.parquet")
    assert path == tmp_path / "sub" / "pool.parquet" and path.exists()
    assert not path.with_name("pool.parquet.tmp").exists()
    table = pq.read_table(path)
    assert table.schema.metadata[b"lead_lightning.pool_schema"] == str(POOL_SCHEMA_VERSION).encode()
    expected_cols = ["id", "cluster", "group", "iu0"] + (
        ["ifd", "n_response_tokens", "ref_loss"] if with_optional else []
    )
    assert table.column_names == expected_cols

    back = PoolIndex.load(path)
    assert torch.equal(back.clusters, pool.clusters)
    assert torch.equal(back.groups, pool.groups)
    assert torch.equal(back.iu0, pool.iu0)
    assert back.group_names == pool.group_names
    assert back.fingerprint() == pool.fingerprint()
    if with_optional:
        assert back.ifd is not None and pool.ifd is not None
        torch.testing.assert_close(back.ifd, pool.ifd, equal_nan=True)
        assert back.n_response_tokens is not None
        assert back.n_response_tokens.tolist() == extra["n_response_tokens"]
        assert back.ref_loss is not None and back.ref_loss.tolist() == extra["ref_loss"]
    else:
        assert back.ifd is None and back.n_response_tokens is None and back.ref_loss is None


def test_load_accepts_str_path(tmp_path):
    pool = PoolIndex(clusters=CLUSTERS, iu0=IU0)
    pool.save(str(tmp_path / "p.parquet"))
    assert len(PoolIndex.load(str(tmp_path / "p.parquet"))) == 6


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Pool index file not found: .*nope\.parquet"):
        PoolIndex.load(tmp_path / "nope.parquet")


@pytest.mark.parametrize("dropped", ["id", "cluster", "group", "iu0"])
def test_load_missing_required_column_names_it(tmp_path, dropped):
    cols = {"id": [0, 1], "cluster": [0, 1], "group": ["a", "b"], "iu0": [1.0, 2.0]}
    del cols[dropped]
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table(cols), path)
    with pytest.raises(ValueError, match=rf"not a pool index: missing column\(s\) \['{dropped}'\]"):
        PoolIndex.load(path)


def test_load_reorders_shuffled_ids(tmp_path):
    perm = np.random.default_rng(0).permutation(6)
    table = pa.table(
        {
            "id": pa.array(perm.astype(np.int64)),
            "cluster": pa.array(np.asarray(CLUSTERS)[perm].astype(np.int32)),
            "group": pa.array(np.asarray(GROUPS)[perm].tolist()),
            "iu0": pa.array(np.asarray(IU0, dtype=np.float32)[perm]),
            "n_response_tokens": pa.array((np.arange(6) * 10)[perm]),
        }
    )
    assert not np.array_equal(perm, np.arange(6))
    path = tmp_path / "shuffled.parquet"
    pq.write_table(table, path)
    back = PoolIndex.load(path)
    ref = PoolIndex(clusters=CLUSTERS, iu0=IU0, groups=GROUPS, n_response_tokens=np.arange(6) * 10)
    assert back.clusters.tolist() == CLUSTERS
    assert back.iu0.tolist() == IU0
    assert [back.group_names[g] for g in back.groups.tolist()] == GROUPS
    assert back.n_response_tokens is not None and back.n_response_tokens.tolist() == [0, 10, 20, 30, 40, 50]
    assert back.fingerprint() == ref.fingerprint()


def test_load_rejects_ids_that_are_not_a_permutation(tmp_path):
    path = tmp_path / "dup.parquet"
    pq.write_table(
        pa.table({"id": [0, 0, 2], "cluster": [0, 0, 0], "group": ["a"] * 3, "iu0": [1.0] * 3}), path
    )
    with pytest.raises(ValueError, match=r"column `id` must be a permutation of 0\.\.N-1 \(N=3\)"):
        PoolIndex.load(path)


def test_fingerprint_tracks_clusters_groups_and_iu0():
    base = PoolIndex(clusters=CLUSTERS, iu0=IU0, groups=GROUPS)
    same = PoolIndex(clusters=torch.tensor(CLUSTERS), iu0=torch.tensor(IU0), groups=GROUPS)
    assert base.fingerprint() == same.fingerprint()
    assert len(base.fingerprint()) == 16
    assert PoolIndex(clusters=CLUSTERS, iu0=[9.0] * 6, groups=GROUPS).fingerprint() != base.fingerprint()
    swapped = [1, 0, 0, 2, 1, 2]
    assert PoolIndex(clusters=swapped, iu0=IU0, groups=GROUPS).fingerprint() != base.fingerprint()
    assert PoolIndex(clusters=CLUSTERS, iu0=IU0, groups=GROUPS[::-1]).fingerprint() != base.fingerprint()
    assert PoolIndex(clusters=CLUSTERS, iu0=IU0).fingerprint() != base.fingerprint()


def test_fingerprint_tracks_reference_losses():
    base = PoolIndex(clusters=CLUSTERS, iu0=IU0, groups=GROUPS)
    with_ref = PoolIndex(clusters=CLUSTERS, iu0=IU0, groups=GROUPS, ref_loss=[1.0] * 6)
    assert with_ref.fingerprint() != base.fingerprint()
    assert (
        with_ref.fingerprint()
        != PoolIndex(clusters=CLUSTERS, iu0=IU0, groups=GROUPS, ref_loss=[2.0] * 6).fingerprint()
    )


@pytest.mark.parametrize("bad", [float("nan"), -0.5, float("inf")])
def test_reference_losses_must_be_losses(bad):
    with pytest.raises(
        ValueError,
        match=r"`ref_loss` must be finite and >= 0 \(it is a loss\); 1 bad value\(s\), first at id 2",
    ):
        PoolIndex(clusters=CLUSTERS, iu0=IU0, ref_loss=[1.0, 1.0, bad, 1.0, 1.0, 1.0])


def test_version_1_files_still_load(tmp_path):
    """An index written before `ref_loss` existed (schema 1) loads, without reference losses."""
    import pyarrow as pa

    path = tmp_path / "v1.parquet"
    table = pa.table({"id": list(range(6)), "cluster": CLUSTERS, "group": GROUPS, "iu0": IU0})
    pq.write_table(table.replace_schema_metadata({"lead_lightning.pool_schema": "1"}), path)
    back = PoolIndex.load(path)
    assert back.ref_loss is None and back.iu0.tolist() == IU0


def test_repr():
    assert (
        repr(PoolIndex(clusters=CLUSTERS, iu0=IU0, groups=GROUPS)) == "PoolIndex(n=6, clusters=3, groups=3)"
    )
