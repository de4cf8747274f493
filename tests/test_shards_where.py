"""--where and --keep-top: the filter language against hand-computed masks, its errors, and the CLI's checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from index.shards.where import WhereError, keep_top, parse_keep_top, parse_where, steps
from test_shards_data import make_shards_dataset, scores  # noqa: F401  (scores: a fixture)


@pytest.fixture
def df():
    return pd.DataFrame({
        "clip_id": [f"c{k}" for k in range(6)],
        "aesthetic": [4.0, 5.0, 6.5, np.nan, 5.5, 7.0],
        "motion": [0.1, 0.5, 0.35, 1.0, 0.2, 0.31],
        "text_area": [0.0, 0.01, 0.03, 0.0, 0.019, 0.0],
        "camera_motion": ["static", "pan_left", "zoom_in", None, "static", "shaky"],
        "text_static": [False, True, False, False, None, True],
    })


def ids(df, mask):
    return list(df["clip_id"][mask])


def test_comparisons_combine_as_written(df):
    node = parse_where("aesthetic >= 5 and motion > 0.3 and text_area < 0.02", df)
    assert ids(df, node.mask(df)) == ["c1", "c5"]
    assert [s.text() for s in steps(node)] == ["aesthetic >= 5", "motion > 0.3", "text_area < 0.02"]
    # and binds tighter than or; parentheses change it
    assert ids(df, parse_where("motion > 0.9 or aesthetic > 6 and text_area > 0.02", df).mask(df)) == ["c2", "c3"]
    # (c3 has no aesthetic: 'unknown or true' is true, as in SQL)
    assert ids(df, parse_where("(motion > 0.9 or aesthetic > 6) and text_area > 0.02", df).mask(df)) == ["c2"]
    assert ids(df, parse_where("0.2 <= motion < 0.4", df).mask(df)) == ["c2", "c4", "c5"]
    assert ids(df, parse_where("5 < aesthetic", df).mask(df)) == ["c2", "c4", "c5"]  # value on the left
    assert ids(df, parse_where("AESTHETIC == 5", df.rename(columns={"aesthetic": "AESTHETIC"})).mask(df.rename(
        columns={"aesthetic": "AESTHETIC"}))) == ["c1"]


def test_text_lists_booleans_and_missing_values(df):
    assert ids(df, parse_where("camera_motion in ('static', \"pan_left\")", df).mask(df)) == ["c0", "c1", "c4"]
    assert ids(df, parse_where("camera_motion not in ('static')", df).mask(df)) == ["c1", "c2", "c5"]
    assert ids(df, parse_where("camera_motion != 'shaky'", df).mask(df)) == ["c0", "c1", "c2", "c4"]
    assert ids(df, parse_where("text_static", df).mask(df)) == ["c1", "c5"]
    assert ids(df, parse_where("not text_static", df).mask(df)) == ["c0", "c2", "c3"]  # c4 has no value
    assert ids(df, parse_where("text_static == false", df).mask(df)) == ["c0", "c2", "c3"]
    # a missing value is unknown, never kept, whatever 'not' says; unknowns combine as in SQL
    assert ids(df, parse_where("not aesthetic > 6", df).mask(df)) == ["c0", "c1", "c4"]
    assert "c3" in ids(df, parse_where("aesthetic < 100 or motion > 0", df).mask(df))
    assert "c3" not in ids(df, parse_where("aesthetic < 100 and motion > 0", df).mask(df))
    assert "c3" in ids(df, parse_where("not (aesthetic > 100 and motion > 2)", df).mask(df))  # not (unknown and false)
    assert "c3" not in ids(df, parse_where("not (aesthetic < 100 and motion > 0)", df).mask(df))


@pytest.mark.parametrize("text,message", [
    ("aesthtic >= 5", "no column 'aesthtic' in the manifest (nearest: aesthetic)"),
    ("motion > 'fast'", "motion holds number, not text"),
    ("camera_motion > 'a'", "compare it with == or !="),
    ("camera_motion == 3", "camera_motion holds text, not number"),
    ("motion > 0.3 and", "unexpected end"),
    ("motion > 0.3 motion < 1", "join conditions with 'and' / 'or'"),
    ("motion", "is not a condition"),
    ("(motion > 1", "expected ')'"),
    ("__import__('os').system('true')", "cannot read \".system"),
    ("__import__ == 'os'", "no column '__import__'"),
    ("motion > 1; rm", "cannot read ';"),
    ("", "empty filter"),
    ("5 > 3", "one column and one value"),
])
def test_mistakes_are_one_line_errors(df, text, message):
    with pytest.raises(WhereError) as e:
        parse_where(text, df)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_keep_top_keeps_the_best_fraction_the_same_way_every_time(df):
    assert parse_keep_top("aesthetic:0.5", df) == ("aesthetic", 0.5)
    mask, threshold = keep_top(df, "aesthetic", 0.5)  # 5 clips have a value: the best ceil(2.5) = 3
    assert ids(df, mask) == ["c2", "c4", "c5"] and threshold == 5.5
    tied = df.assign(aesthetic=5.0)
    assert ids(tied, keep_top(tied, "aesthetic", 0.5)[0]) == ["c0", "c1", "c2"]  # ties: smallest clip_id
    for bad, message in (("aesthetic", "COLUMN:FRACTION"), ("aesthetic:1.5", "0 < FRACTION <= 1"),
                         ("aestetic:0.5", "nearest: aesthetic"), ("camera_motion:0.5", "does not hold numbers")):
        with pytest.raises(WhereError, match=message):
            parse_keep_top(bad, df)


def test_the_cli_refuses_a_bad_filter_before_any_work(tmp_path, capsys, scores):
    from index.shards.cli import shards_main

    data = make_shards_dataset(tmp_path / "src", shots=1, frames=10, with_scores=True)
    out = tmp_path / "out"
    for args, message in ((["--where", "aesthetic >= 5 and motoin > 0.3"], "nearest: motion"),
                          (["--keep-top", "aesthetic:2"], "0 < FRACTION <= 1"),
                          (["--fps", "0"], "--fps must be a positive number"),
                          (["--index", str(tmp_path / "nowhere")], "not an index folder")):
        assert shards_main([str(data["manifest"]), "-o", str(out), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1 and err.startswith("build-shards: error:")
        assert not out.exists()  # nothing was done
    uncaptioned = tmp_path / "split.parquet"  # split-videos' manifest given by mistake: no embedding, no cut first
    pd.read_parquet(data["manifest"]).drop(columns=["caption"]).to_parquet(uncaptioned)
    assert shards_main([str(uncaptioned), "-o", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (f"build-shards: error: {uncaptioned}: no clip has a caption; run "
                                               "caption-videos on it first")
    assert not out.exists()


def test_a_score_the_manifest_lacks_says_which_command_writes_it():
    df = pd.DataFrame({"clip_id": ["a"], "motion": [0.5]})
    with pytest.raises(WhereError, match=r"no column 'aesthetic'.*score-clips writes it \(--scorers default,aesthetic\)"):
        parse_where("aesthetic >= 5 and motion > 0.3", df)


def test_nan_in_a_parquet_file_is_missing_as_in_a_frame(tmp_path):
    """A float column holding NaN (not null) in the file: SQL orders NaN above every number, the filter treats it as
    no value, as the frame path always has."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from index import query

    values = [4.0, float("nan"), 7.0, None]
    pq.write_table(pa.table({"clip_id": ["a", "b", "c", "d"], "aesthetic": pa.array(values, from_pandas=False)}),
                   tmp_path / "m.parquet")
    with query.connect() as con:
        src = query.files_sql(con, [tmp_path / "m.parquet"])
        assert query.scalar(con, f"SELECT count(*) FROM {src} WHERE NOT isfinite(aesthetic)") == 1  # a real NaN
        kinds = {"clip_id": "text", "aesthetic": "number"}
        for text, want in (("aesthetic > 6", ["c"]), ("not aesthetic > 6", ["a"]), ("aesthetic != 4", ["c"]),
                           ("aesthetic > 6 or clip_id == 'b'", ["b", "c"])):
            node = parse_where(text, kinds)
            got = [r for r, in con.execute(f"SELECT clip_id FROM {src} WHERE {node.where()} ORDER BY 1").fetchall()]
            assert got == want, text
