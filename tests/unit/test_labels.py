from __future__ import annotations

import pandas as pd
import pytest

from cxr_triage.data.labels import normalise_labels_table, read_labels_table
from cxr_triage.errors import DataError
from cxr_triage.vocabulary import FINDING_COLUMNS

NIH_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"
)


def test_read_labels_table_chestxray14_format(tmp_path):
    path = tmp_path / "Data_Entry_2017.csv"
    path.write_text(
        NIH_HEADER + "00000001_000.png,Cardiomegaly|Effusion,0,1,57,M,PA,2682,2749,0.143,0.143\n"
        "00000002_000.png,No Finding,0,2,81,F,AP,2500,2048,0.171,0.171\n"
    )
    table = read_labels_table(path)
    assert table["label"].tolist() == ["abnormal", "normal"]
    assert table.loc[0, "cardiomegaly"] == 1 and table.loc[0, "effusion"] == 1
    assert table.loc[1, list(FINDING_COLUMNS)].sum() == 0
    assert table["patient_id"].tolist() == ["1", "2"]
    assert table["sex"].tolist() == ["M", "F"]
    assert table["age"].tolist() == [57, 81]
    assert table["view_position"].tolist() == ["PA", "AP"]


def test_normalise_labels_table_accepts_aliases_and_numeric_labels():
    raw = pd.DataFrame(
        {
            "File": ["a.png", "b.png"],
            "Label": ["1", "0"],
            "Gender": ["female", "m"],
            "View": ["pa", ""],
        }
    )
    table = normalise_labels_table(raw, "t.csv")
    assert table["image"].tolist() == ["a.png", "b.png"]
    assert table["label"].tolist() == ["abnormal", "normal"]
    assert table["sex"].tolist() == ["F", "M"]
    assert table["view_position"].tolist() == ["PA", ""]


def test_normalise_labels_table_without_labels_is_unlabelled():
    table = normalise_labels_table(pd.DataFrame({"image": ["a.dcm"]}), "t.csv")
    assert table["label"].tolist() == [""]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"name": ["a.png"]}, "no image column"),
        ({"image": ["a.png"], "label": ["maybe"]}, "label must be normal or abnormal"),
        ({"image": ["a.png"], "finding": ["Broken Heart"]}, "unknown finding 'Broken Heart'"),
        ({"image": ["a.png", "a.png"], "label": ["normal", "normal"]}, "listed twice"),
        (
            {"image": ["a.png"], "label": ["normal"], "finding": ["Mass"]},
            "label 'normal' but findings",
        ),
    ],
)
def test_normalise_labels_table_refuses_bad_tables(raw, message):
    with pytest.raises(DataError, match=message):
        normalise_labels_table(pd.DataFrame(raw), "t.csv")


def test_normalise_labels_table_drops_impossible_ages():
    table = normalise_labels_table(pd.DataFrame({"image": ["a", "b"], "age": ["413", "x"]}), "t")
    assert table["age"].isna().all()
