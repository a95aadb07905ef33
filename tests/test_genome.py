"""Block genome: the spec table, validation, breeding within ranges, lineage, plain values."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corec_node.engine import genome as gm
from corec_node.engine.genome import GENES, Genome, default_genome, from_dict, to_dict, validate

KERNELS = ("mean", "identity", "random_walk", "sine", "clip")


def in_range(g: Genome, kernels=None) -> None:
    """Every gene present, of its kind, inside its range or among its choices."""
    assert set(g.params) == set(GENES)
    for name, spec in GENES.items():
        v = g[name]
        if spec.kind == "float":
            assert isinstance(v, float) and spec.lo <= v <= spec.hi, (name, v)
        elif spec.kind == "int":
            assert isinstance(v, int) and spec.lo <= v <= spec.hi, (name, v)
        elif spec.choices is not None:
            assert v in spec.choices, (name, v)
        else:
            assert isinstance(v, str) and v and (kernels is None or v in kernels)


genomes = st.builds(
    lambda seed, rate, scale: gm.mutate(default_genome(), np.random.default_rng(seed), rate, scale,
                                        genes=list(GENES), kernels=KERNELS),
    st.integers(0, 2**32 - 1), st.floats(0.0, 1.0), st.floats(0.0, 2.0),
)


# -- spec and validation ---------------------------------------------------------------


def test_spec_has_the_genes_the_issue_names_with_meanings():
    for name in ("alpha", "beta", "gamma", "season", "damping", "sensitivity", "window",
                 "repair_threshold", "fusion_floor", "kernel"):
        assert name in GENES and GENES[name].meaning
    assert 0 in GENES["season"].choices
    assert {4, 7, 12, 24, 52} <= set(GENES["season"].choices)
    assert GENES["kernel"].default == "mean"
    assert [r["gene"] for r in gm.describe()] == list(GENES)


def test_default_genome_is_valid_and_stable():
    g = default_genome()
    in_range(g)
    assert g.generation == 0 and g.parents == ()
    assert g == default_genome() and g.id == default_genome().id
    assert len(g.id) == 16 and int(g.id, 16) >= 0
    assert validate(dict(g.params)) == dict(g.params)


@pytest.mark.parametrize(
    ("gene", "bad"),
    [("alpha", 1.5), ("alpha", -0.1), ("alpha", float("nan")), ("alpha", "0.3"),
     ("alpha", True), ("window", 3), ("window", 2.5), ("season", 11), ("season", "12"),
     ("damping", 0.5), ("fusion_floor", 2.0), ("kernel", ""), ("kernel", 3)],
)
def test_validation_error_names_the_gene_and_what_it_accepts(gene, bad):
    with pytest.raises(ValueError) as e:
        validate({gene: bad})
    msg = str(e.value)
    assert repr(gene) in msg
    if GENES[gene].kind != "choice":
        assert str(GENES[gene].lo) in msg and str(GENES[gene].hi) in msg


def test_validation_refuses_unknown_genes_and_fills_missing_ones():
    with pytest.raises(ValueError, match="unknown genes.*'alhpa'"):
        validate({"alhpa": 0.3})
    p = validate({"alpha": 0.3})
    assert p["alpha"] == 0.3 and p["window"] == GENES["window"].default


def test_values_are_normalized_to_the_gene_kind():
    p = validate({"alpha": 1, "window": 64.0, "season": np.int64(12)})
    assert type(p["alpha"]) is float and type(p["window"]) is int and type(p["season"]) is int


def test_kernel_choices_come_from_the_caller():
    assert validate({"kernel": "plugin_kernel"})["kernel"] == "plugin_kernel"  # no list: any name
    assert validate({"kernel": "sine"}, kernels=KERNELS)["kernel"] == "sine"
    with pytest.raises(ValueError, match="'kernel'.*plugin_kernel"):
        validate({"kernel": "plugin_kernel"}, kernels=KERNELS)


def test_make_checks_lineage():
    with pytest.raises(ValueError, match="generation"):
        gm.make({}, generation=-1)
    with pytest.raises(ValueError, match="parents"):
        gm.make({}, parents=("a", "b", "c"))
    g = gm.make({"alpha": 0.2}, 3, ("x",))
    assert g.generation == 3 and g.parents == ("x",) and g["alpha"] == 0.2


def test_genome_pickles_for_a_worker_process():
    import pickle

    g = gm.breed(default_genome(), default_genome().replace(season=12), np.random.default_rng(1))
    back = pickle.loads(pickle.dumps(g))
    assert back == g and back.parents == g.parents and back.generation == g.generation


def test_params_are_read_only():
    g = default_genome()
    with pytest.raises(TypeError):
        g.params["alpha"] = 0.9  # type: ignore[index]
    with pytest.raises(AttributeError):
        g.generation = 5  # type: ignore[misc]


def test_id_depends_on_params_generation_and_parents():
    g = default_genome()
    assert g.replace(alpha=0.31).id != g.id
    assert gm.make(g.params, 1).id != g.id
    assert gm.make(g.params, 0, ("p",)).id != g.id
    assert g.replace(alpha=g["alpha"]).id == g.id


# -- breeding ---------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(genomes, st.integers(0, 2**32 - 1), st.floats(0.0, 1.0), st.floats(0.0, 3.0))
def test_mutate_stays_in_range_and_records_lineage(g, seed, rate, scale):
    child = gm.mutate(g, np.random.default_rng(seed), rate, scale, genes=list(GENES),
                      kernels=KERNELS)
    in_range(child, KERNELS)
    assert child.generation == g.generation + 1 and child.parents == (g.id,)
    if rate > 0 and scale >= 0.01:
        assert dict(child.params) != dict(g.params)  # at least one gene moved


@settings(max_examples=200, deadline=None)
@given(genomes, genomes, st.integers(0, 2**32 - 1))
def test_recombine_takes_each_gene_from_a_parent(a, b, seed):
    child = gm.recombine(a, b, np.random.default_rng(seed))
    in_range(child, KERNELS)
    for name in GENES:
        assert child[name] in (a[name], b[name])
    assert child.generation == max(a.generation, b.generation) + 1
    assert child.parents == (a.id, b.id)


@settings(max_examples=100, deadline=None)
@given(genomes, genomes, st.integers(0, 2**32 - 1))
def test_breed_is_one_lineage_step(a, b, seed):
    child = gm.breed(a, b, np.random.default_rng(seed))
    in_range(child, KERNELS)
    if a.id != b.id:
        assert child.parents == (a.id, b.id)
        assert child.generation == max(a.generation, b.generation) + 1


def test_breeding_is_deterministic_for_a_seed():
    g = default_genome()
    one = gm.breed(g, g.replace(alpha=0.2, season=12), np.random.default_rng(5))
    two = gm.breed(g, g.replace(alpha=0.2, season=12), np.random.default_rng(5))
    assert one == two and one.id == two.id


def test_mutate_moves_only_evolving_genes_by_default():
    g = default_genome()
    rng = np.random.default_rng(1)
    for _ in range(50):
        c = gm.mutate(g, rng, rate=1.0, scale=0.5)
        for name in GENES:
            if name not in gm.EVOLVING:
                assert c[name] == g[name]
    assert "kernel" not in gm.EVOLVING and "season" in gm.EVOLVING


def test_mutate_moves_the_kernel_only_among_given_kernels():
    g = default_genome()
    rng = np.random.default_rng(2)
    seen = {gm.mutate(g, rng, 1.0, genes=["kernel"], kernels=KERNELS)["kernel"] for _ in range(40)}
    assert seen <= set(KERNELS) - {"mean"} and len(seen) > 1
    assert gm.mutate(g, rng, 1.0, genes=["kernel"])["kernel"] == "mean"  # no list: kept


def test_mutate_respects_allowed_choices():
    rng = np.random.default_rng(3)
    for _ in range(30):
        c = gm.mutate(default_genome(), rng, 1.0, choices={"season": (0, 12, 24)})
        assert c["season"] in (12, 24)


def test_mutate_rejects_bad_arguments():
    with pytest.raises(ValueError):
        gm.mutate(default_genome(), np.random.default_rng(0), rate=1.5)
    with pytest.raises(ValueError, match="unknown gene"):
        gm.mutate(default_genome(), np.random.default_rng(0), genes=["nope"])


def test_inheritance_keeps_the_genome_whole():
    strong = gm.mutate(default_genome(), np.random.default_rng(4))
    assert gm.inherit_fused(strong) is strong and gm.inherit_fused(strong).generation == 1
    assert gm.inherit_repaired(strong).id == strong.id


# -- plain values -------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(genomes)
def test_to_dict_from_dict_round_trip_through_json(g):
    d = to_dict(g)
    back = from_dict(json.loads(json.dumps(d)), kernels=KERNELS)
    assert back == g and back.id == g.id and back.generation == g.generation
    assert back.parents == g.parents


def test_to_dict_is_msgpack_friendly():
    msgpack = pytest.importorskip("msgpack")
    g = gm.breed(default_genome(), default_genome().replace(season=12), np.random.default_rng(0))
    assert from_dict(msgpack.unpackb(msgpack.packb(to_dict(g)))) == g


def test_from_dict_tolerates_missing_genes_and_refuses_unknown_ones():
    d = to_dict(default_genome().replace(alpha=0.25))
    del d["params"]["fusion_floor"]  # a row written before the gene existed
    g = from_dict(d)
    assert g["fusion_floor"] == GENES["fusion_floor"].default and g["alpha"] == 0.25
    d["params"]["future_gene"] = 1
    with pytest.raises(ValueError, match="future_gene"):
        from_dict(d)


@pytest.mark.parametrize(
    "bad",
    [[], {"params": {"alpha": 9.0}}, {"params": {}, "extra": 1}, {"v": 99, "params": {}},
     {"params": {}, "parents": "abc"}, {"params": {}, "generation": -2}],
)
def test_from_dict_errors_are_value_errors(bad):
    with pytest.raises(ValueError):
        from_dict(bad)
