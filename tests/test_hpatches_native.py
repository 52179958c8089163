"""The compiled helpers (examples/hpatches/_native.c): the readers are exact on what they accept and return None on
anything else; the verification distances are Euclidean.

Expected values come from Python itself: ``float(text)`` is correctly rounded (David Gay's algorithm), so
``np.float32(float(text))`` is the double-then-float32 rounding that the benchmark's
``pd.read_csv(...).astype(np.float32)`` performs; task-file rows come from the csv module.
"""

from __future__ import annotations

import csv
import io
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tripletkit_hpatches import descriptors, tasks
from tripletkit_hpatches.descriptors import IMAGE_TYPES, read_descriptor_dir

if descriptors._native is None:
    if os.environ.get("CI"):  # CI installs with a compiler: a missing extension there is a build failure
        pytest.fail("tripletkit_hpatches._native was not built", pytrace=False)
    pytest.skip("the compiled reader was not built here (no C compiler at install)", allow_module_level=True)

native = descriptors._native


def _expected(texts: list[str]) -> np.ndarray:
    return np.array([float(t) for t in texts], dtype=np.float64).astype(np.float32)


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def _parse(text: str, delimiter: str = ","):
    out = native.parse(text.encode(), delimiter)
    if out is None:
        return None
    buf, rows, cols = out
    return np.frombuffer(buf, dtype=np.float32).reshape(rows, cols)


FORMATS = [
    lambda v: f"{v:.9g}",  # the benchmark's and our writer's
    lambda v: f"{v:.17g}",
    repr,
    lambda v: f"{v:.6e}",
    lambda v: f"{v:.3f}",
    lambda v: f"{v:+.12E}",
    lambda v: f"{v:.40f}",  # more digits than fit in 64 bits
]

finite = st.floats(allow_nan=False, allow_infinity=False, width=64).filter(lambda v: abs(v) < 3e38)


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(finite, min_size=1, max_size=24),
    fmt=st.sampled_from(range(len(FORMATS))),
    cols=st.integers(1, 6),
    delimiter=st.sampled_from([",", ";"]),
    newline=st.sampled_from(["\n", "\r\n"]),
    final_newline=st.booleans(),
)
def test_values_are_the_double_then_float32_rounding(values, fmt, cols, delimiter, newline, final_newline):
    cols = min(cols, len(values))
    rows = len(values) // cols
    values = values[: rows * cols]
    texts = [FORMATS[fmt](v) for v in values]
    lines = [delimiter.join(texts[r * cols : (r + 1) * cols]) for r in range(rows)]
    text = newline.join(lines) + (newline if final_newline else "")
    got = _parse(text, delimiter)
    assert got is not None and got.shape == (rows, cols)
    np.testing.assert_array_equal(_bits(got), _bits(_expected(texts).reshape(rows, cols)))


@pytest.mark.parametrize(
    "text,want",
    [
        ("-0,0,+0\n", ["-0", "0", "+0"]),  # the sign of zero is kept
        ("1.,.5,-.25\n", ["1.", ".5", "-.25"]),
        ("1e-400,1e-320,4.9406564584124654e-324\n", ["1e-400", "1e-320", "4.9406564584124654e-324"]),
        ("00000000000000000000012.5,1E+2,7e0\n", ["00000000000000000000012.5", "1E+2", "7e0"]),
        ("0.1000000000000000055511151231257827021181583404541015625,3\n", ["0.1", "3"]),
        ("123456789012345678901234567890,1\n", ["123456789012345678901234567890", "1"]),
        ("1e39,-1e400\n", ["1e39", "-1e400"]),  # past float32 (and double): inf, which the caller then names
    ],
)
def test_edge_values(text, want):
    np.testing.assert_array_equal(_bits(_parse(text)[0]), _bits(_expected(want)))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n",
        "1,2\n\n3,4\n",  # a blank line (pandas skips it: the row count would differ)
        "1,2\n3,4\n\n",
        "1,2\n3\n",  # ragged
        "1,2\n3,4,5\n",
        "1, 2\n",  # a space
        " 1,2\n",
        '"1",2\n',  # quotes
        "nan,1\n",
        "inf,1\n",
        "1,\n",  # an empty field
        ",1\n",
        "a,b\n1,2\n",  # a header
        "\ufeff1,2\n",  # a byte-order mark
        "1.2.3,4\n",
        "--1,2\n",
        "1e,2\n",
        ".,2\n",
        "1,2\r3,4\n",  # a lone carriage return
        "1\t2\n",
        "1," + "1" * 200 + "e-200\n",  # a token longer than the strtod buffer
    ],
)
def test_anything_else_is_left_to_pandas(text):
    assert _parse(text) is None


def test_delimiters_that_could_be_part_of_a_number_are_refused():
    for d in "0.-+eE\n":
        assert native.parse(b"1,2\n", d) is None


def test_the_reader_gives_the_same_set_with_and_without_the_extension(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    data = {s: {t: rng.standard_normal((7, 5)).astype(np.float32) for t in IMAGE_TYPES} for s in ("i_a", "v_b")}
    descriptors.write_descriptor_dir(data, tmp_path)
    (tmp_path / "v_b" / "e2.csv").write_text("1, 2,3,4,5\n" * 7)  # spaces: this one file goes through pandas
    with_ext = read_descriptor_dir(tmp_path, threads=2)
    monkeypatch.setattr(descriptors, "_native", None)
    plain = read_descriptor_dir(tmp_path, threads=2)
    for s in data:
        for t in IMAGE_TYPES:
            np.testing.assert_array_equal(_bits(with_ext[s][t]), _bits(plain[s][t]))
    np.testing.assert_array_equal(with_ext["v_b"]["e2"][0], [1, 2, 3, 4, 5])


# ------------------------------------------------------------------------------------------------ task files
names = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCXYZ0123456789_.-", min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(st.tuples(names, st.integers(0, 10**18 - 1), names), min_size=0, max_size=40),
    newline=st.sampled_from(["\n", "\r\n"]),
    final_newline=st.booleans(),
)
def test_task_rows_match_the_csv_module(rows, newline, final_newline):
    lines = ["s1,idx,s2"] + [f"{a},{i},{b}" for a, i, b in rows]
    text = newline.join(lines) + (newline if final_newline or not rows else "")
    out = native.parse_tasks(text.encode(), "sis")
    assert out is not None
    header, n, (c1, idx, c2) = out
    want = list(csv.reader(io.StringIO(text)))
    assert header == want[0] and n == len(want) - 1 == len(rows)
    got_s1 = [c1[1][k] for k in np.frombuffer(c1[0], dtype=np.int32)]
    got_s2 = [c2[1][k] for k in np.frombuffer(c2[0], dtype=np.int32)]
    assert got_s1 == [r[0] for r in want[1:]] and got_s2 == [r[2] for r in want[1:]]
    assert np.frombuffer(idx, dtype=np.int64).tolist() == [int(r[1]) for r in want[1:]]
    # names are interned in order of first appearance, each once
    assert c1[1] == list(dict.fromkeys(r[0] for r in want[1:]))


@pytest.mark.parametrize(
    "text",
    [
        "s,idx\na,-1\n",  # negative
        "s,idx\na,1.5\n",
        "s,idx\na,\n",
        "s,idx\na\n",
        "s,idx\na,1,2\n",
        "s,idx\n,1\n",
        "s,idx\n../x,1\n",  # '/' is not a name character
        's,idx\n"a",1\n',
        "s,idx\na,1\n\n",  # a blank line
        "s,idx\na, 1\n",
        "s,idx\na,1234567890123456789\n",  # 19 digits: past what the reader takes as int64
        "s,idx",  # no rows and no newline after the header
        "s;idx\na;1\n",
        "s,idx,extra\na,1,2\n",  # the header's width differs from the kinds
    ],
)
def test_task_files_outside_the_layout_are_left_to_pandas(text):
    assert native.parse_tasks(text.encode(), "si") is None


def test_read_table_gives_the_same_columns_with_and_without_the_extension(tmp_path, monkeypatch):
    path = tmp_path / "verif_pos_split-x.csv"
    path.write_text("s1,t1,idx1,s2,t2,idx2\nv_b,0,3,i_a,5,1\ni_a,2,0,i_a,1,9\nv_b,1,1,v_c,0,2\n")
    cols = ["s1", "t1", "idx1", "s2", "t2", "idx2"]
    kinds = dict(ints=("t1", "idx1", "t2", "idx2"), names=("s1", "s2"))
    native, coded = tasks._read_table(path, cols, **kinds)
    monkeypatch.setattr(tasks, "_native", None)
    plain, none = tasks._read_table(path, cols, **kinds)
    assert none == {} and set(coded) == {"s1", "s2"}
    for c in cols:
        assert native[c].tolist() == plain[c].tolist() and native[c].dtype == plain[c].dtype
    names, c1, c2 = tasks._shared_codes(coded, "s1", "s2")
    assert [names[k] for k in c1] == ["v_b", "i_a", "v_b"] and [names[k] for k in c2] == ["i_a", "i_a", "v_c"]


def test_decimals_next_to_float32_midpoints_take_the_fast_path_exactly():
    # 15-16 significant digits next to the midpoint of two float32 neighbours: the mantissa fits 2^53 and the
    # exponent is small, so Clinger's single correctly rounded operation decides the side of the midpoint; one
    # double ulp off (a reciprocal multiplied instead of a division, say) lands some of them on the wrong float32
    rng = np.random.default_rng(11)
    lo = (rng.standard_normal(30000) * 10.0 ** rng.integers(-6, 6, 30000)).astype(np.float32)
    mid = (lo.astype(np.float64) + np.nextafter(lo, np.float32(np.inf)).astype(np.float64)) / 2
    texts = [f"{m:.16g}" for m in mid[:15000]] + [f"{m:.15g}" for m in mid[15000:]]
    got = _parse("\n".join(",".join(texts[i : i + 10]) for i in range(0, len(texts), 10)) + "\n")
    np.testing.assert_array_equal(_bits(got.ravel()), _bits(_expected(texts)))


# ------------------------------------------------------------------------------------------------ pair distances
@pytest.mark.parametrize("dim", [1, 5, 16, 17, 128, 130])
def test_pair_distances_are_euclidean(dim):
    rng = np.random.default_rng(dim)
    table = rng.standard_normal((300, dim)).astype(np.float32)
    r1, r2 = rng.integers(0, 300, 5000), rng.integers(0, 300, 5000)
    r2[:50] = r1[:50]  # identical rows: exactly 0
    out = np.full(5000, np.nan)
    native.pair_distances(table, r1, table, r2, dim, out, 0, 2000, False)
    native.pair_distances(table, r1, table, r2, dim, out, 2000, 5000, False)
    want = np.sqrt(((table[r1].astype(np.float64) - table[r2]) ** 2).sum(1))
    np.testing.assert_allclose(out, want, rtol=2e-6, atol=1e-6)
    assert (out[:50] == 0).all()
    # float64 from two tables: the float64 sum, to its rounding
    other = rng.standard_normal((40, dim)).astype(np.float32)
    r3 = rng.integers(0, 40, 5000)
    wide = np.empty(5000)
    native.pair_distances(table, r1, other, r3, dim, wide, 0, 5000, True)
    want = np.sqrt(((table[r1].astype(np.float64) - other[r3]) ** 2).sum(1))
    np.testing.assert_allclose(wide, want, rtol=1e-14, atol=0)


def test_pair_distances_refuse_rows_outside_the_table_and_bad_sizes():
    table = np.zeros((10, 4), np.float32)
    out = np.empty(3)
    small = np.zeros((3, 4), np.float32)
    ok = np.array([0, 1, 2])
    with pytest.raises(IndexError, match="outside the table"):
        native.pair_distances(table, np.array([0, 1, 10]), table, ok, 4, out, 0, 3, False)
    with pytest.raises(IndexError, match="outside the table"):
        native.pair_distances(table, np.array([0, -1, 2]), table, ok, 4, out, 0, 3, False)
    with pytest.raises(IndexError, match="outside the table"):
        native.pair_distances(table, ok, small, np.array([0, 3, 1]), 4, out, 0, 3, True)
    with pytest.raises(ValueError, match="inconsistent"):
        native.pair_distances(table, np.array([0, 1]), table, ok, 4, out, 0, 2, False)
    with pytest.raises(ValueError, match="inconsistent"):
        native.pair_distances(table, ok, table, ok, 3, out, 0, 3, False)
    with pytest.raises(ValueError, match="inconsistent"):
        native.pair_distances(table, ok, table, ok, 4, out, 0, 4, False)


def test_verification_is_the_same_with_and_without_the_extension(monkeypatch):
    from tripletkit_hpatches.evaluate import evaluate_verification
    from tripletkit_hpatches.tasks import generate_verification

    rng = np.random.default_rng(5)
    data = {s: {t: rng.standard_normal((40, 24)).astype(np.float32) for t in IMAGE_TYPES} for s in ("i_a", "v_b")}
    desc = descriptors.DescriptorSet(data)
    pairs = generate_verification(["i_a", "v_b"], {"i_a": 40, "v_b": 40}, n_pairs=3000, progress=False)
    with_ext = evaluate_verification(desc, pairs, threads=2)
    monkeypatch.setattr(descriptors, "_native", None)
    plain = evaluate_verification(desc, pairs, threads=2)
    for lv in "eht":
        for kind in ("intra", "inter"):
            for m in ("ap", "auc"):
                assert with_ext[lv][kind][m] == pytest.approx(plain[lv][kind][m], abs=1e-12)


# ------------------------------------------------------------------------------------------------ count ahead
@pytest.mark.parametrize("inclusive", [False, True])
def test_count_ahead_is_the_brute_force_count(inclusive):
    rng = np.random.default_rng(int(inclusive))
    q, n, m = 7, 301, 5
    dd = rng.integers(0, 20, (q, n)).astype(np.float64)  # integers: many exact ties with the positives
    pos = np.sort(rng.integers(0, 20, (q, m)).astype(np.float64), 1)
    cuts = np.array([0, 0, 17, 100, 100, 300, 301], dtype=np.int64)
    out = np.full((q, m, len(cuts)), -1, dtype=np.int64)
    native.count_ahead(dd, q, n, pos, m, cuts, inclusive, out)
    for r in range(q):
        for p in range(m):
            for k, c in enumerate(cuts):
                ahead = dd[r, :c] <= pos[r, p] if inclusive else dd[r, :c] < pos[r, p]
                assert out[r, p, k] == int(ahead.sum())


def test_count_ahead_refuses_bad_cuts_and_sizes():
    dd, pos, out = np.zeros((2, 5)), np.zeros((2, 3)), np.zeros((2, 3, 2), dtype=np.int64)
    for cuts in ([3, 2], [1, 6], [-1, 2]):
        with pytest.raises(ValueError, match="inconsistent"):
            native.count_ahead(dd, 2, 5, pos, 3, np.array(cuts, dtype=np.int64), False, out)
    with pytest.raises(ValueError, match="inconsistent"):
        native.count_ahead(dd, 2, 4, pos, 3, np.array([1, 2], dtype=np.int64), False, out)


@pytest.mark.parametrize("ties", ["reference", "pessimistic"])
def test_retrieval_is_the_same_with_and_without_the_extension(ties, monkeypatch):
    from tripletkit_hpatches.evaluate import evaluate_retrieval
    from tripletkit_hpatches.tasks import TaskRows

    rng = np.random.default_rng(9)
    seqs = ["i_a", "v_b", "v_c"]
    # coarse values: distractors tie with positives often, where the two tie rules differ
    data = {s: {t: rng.integers(0, 3, (60, 4)).astype(np.float32) for t in IMAGE_TYPES} for s in seqs}
    desc = descriptors.DescriptorSet(data)
    queries = TaskRows(np.array(seqs * 20, dtype=object), np.tile(np.arange(20), 3))
    distractors = TaskRows(np.array(rng.choice(seqs, 150), dtype=object), rng.integers(0, 60, 150))
    pools = (10, 50, 120)
    with_ext = evaluate_retrieval(desc, queries, distractors, ties, pools)["per_query"]
    monkeypatch.setattr(descriptors, "_native", None)
    plain = evaluate_retrieval(desc, queries, distractors, ties, pools)["per_query"]
    np.testing.assert_array_equal(with_ext, plain)


def test_matching_is_the_same_with_and_without_the_extension(monkeypatch):
    from tripletkit_hpatches.evaluate import evaluate_matching

    rng = np.random.default_rng(13)
    base = rng.standard_normal((50, 12)).astype(np.float32)
    data = {
        s: {t: (base + 0.3 * rng.standard_normal((50, 12))).astype(np.float32) for t in IMAGE_TYPES}
        for s in ("i_a", "v_b")
    }
    desc = descriptors.DescriptorSet(data)
    with_ext = evaluate_matching(desc, ["i_a", "v_b"])
    monkeypatch.setattr(descriptors, "_native", None)
    plain = evaluate_matching(desc, ["i_a", "v_b"])
    assert 0 < plain["mean"] < 1
    for s in ("i_a", "v_b"):
        for lv in "eht":
            for i in range(1, 6):
                for m in ("ap", "sr"):
                    assert with_ext["per_sequence"][s][lv][i][m] == pytest.approx(
                        plain["per_sequence"][s][lv][i][m], abs=1e-12
                    )
