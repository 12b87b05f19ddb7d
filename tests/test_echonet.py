"""EchoNet-Dynamic layout: reading, resume-safe writing, phantom datasets."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from echoflow_models import echonet
from echoflow_models.echonet import (
    FILELIST_COLUMNS,
    EchoNetFormatError,
    EchoNetWriter,
    load_echonet_videos,
    read_filelist,
    write_phantom_dataset,
)
from echoflow_models.phantom import PatientAnatomy, render_video
from echoflow_models.video_io import PARTIAL_MARKER, write_avi

REAL_HEADER = "FileName,EF,ESV,EDV,FrameHeight,FrameWidth,FPS,NumberOfFrames,Split\n"
KW = dict(num_patients=3, seed=4, num_frames=16, split_fractions=(0.34, 0.33, 0.33))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("echonet")
    records = write_phantom_dataset(root, **KW)
    return root, records


def _rows(root):
    with open(root / "FileList.csv", newline="") as fh:
        return list(csv.reader(fh))


def test_phantom_dataset_layout_and_labels(dataset):
    root, records = dataset
    rows = _rows(root)
    assert tuple(rows[0][:9]) == FILELIST_COLUMNS and rows[0][9:] == ["PatientID", "View", "PatientSeed"]
    assert len(rows) == 4 and len(records) == 3
    assert sorted(r.split for r in records) == ["TEST", "TRAIN", "VAL"]  # split by patient
    assert sorted(p.name for p in (root / "Videos").iterdir()) == sorted(
        f"{r.file_name}.avi" for r in records
    )
    back = read_filelist(root)
    assert [r.file_name for r in back] == [r.file_name for r in records]
    for rec in back:
        assert not rec.file_name.endswith(".avi")
        assert (rec.frame_height, rec.frame_width, rec.number_of_frames, rec.fps) == (112, 112, 16, 32.0)
        assert rec.view == "A4C" and rec.patient_id
        # EF column equals the phantom's EF measured on its rendered masks
        anatomy = PatientAnatomy.sample(int(rec.extra["PatientSeed"]), "A4C")
        ef_draw = np.random.default_rng([4, int(rec.patient_id[-5:]), 0, 0, 0xEF]).uniform(10, 85)
        video = render_video(anatomy, ef_draw, num_frames=1)
        assert rec.ef == pytest.approx(video.ef, abs=1e-6)
        assert rec.edv == pytest.approx(video.edv, rel=1e-8) and rec.esv < rec.edv
        assert abs(rec.ef - ef_draw) < 1.5


def test_load_videos(dataset):
    root, records = dataset
    loaded = list(load_echonet_videos(root))
    assert len(loaded) == 3
    for rec, frames in loaded:
        assert frames.dtype == np.uint8 and frames.shape == (rec.number_of_frames, 112, 112) == (16, 112, 112)
        assert frames.mean() > 10
    train = list(load_echonet_videos(root, split="train"))
    assert [r.split for r, _ in train] == ["TRAIN"]
    assert len(list(load_echonet_videos(root, max_videos=2))) == 2
    with pytest.raises(ValueError, match="split"):
        list(load_echonet_videos(root, split="holdout"))


def test_resume_after_interruptions(tmp_path, dataset, monkeypatch):
    src_root, _ = dataset
    root = tmp_path / "ds"
    # 1) a run that dies after writing two videos
    calls = {"n": 0}
    real = echonet.video_io.write_avi

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(echonet.video_io, "write_avi", flaky)
    with pytest.raises(KeyboardInterrupt):
        write_phantom_dataset(root, **KW)
    monkeypatch.setattr(echonet.video_io, "write_avi", real)
    assert len(read_filelist(root)) == 2
    first = {p.name: p.stat().st_mtime_ns for p in (root / "Videos").iterdir()}

    # 2) leftovers of a harder crash: a temp file, a video of ours without its row (journalled before it was
    #    written), a half-written row; and a user's own video that the writer never made
    videos = root / "Videos"
    (videos / f".PH_x{PARTIAL_MARKER}1-aa.avi").write_bytes(b"partial")
    with open(root / echonet.JOURNAL_NAME, "a") as fh:
        fh.write("PH_OURS\n")
    write_avi(videos / "PH_OURS.avi", np.zeros((2, 8, 8), np.uint8), 10, codec="ffv1")
    write_avi(videos / "USERS_OWN.avi", np.zeros((2, 8, 8), np.uint8), 10, codec="ffv1")
    users_bytes = (videos / "USERS_OWN.avi").read_bytes()
    with open(root / "FileList.csv", "a") as fh:
        fh.write("PH_S4P00002_A4C_00,55.1,")  # cut mid-row
    with EchoNetWriter(root) as w:
        assert w.truncated_tail and len(w) == 2
        assert [p.name for p in w.removed_orphans] == ["PH_OURS.avi"] and len(w.removed_partials) == 1
        assert [p.name for p in w.foreign_files] == ["USERS_OWN.avi"]
        with pytest.raises(FileExistsError, match="did not make it"):
            w.add("USERS_OWN", np.zeros((2, 8, 8), np.uint8), 10, ef=50, esv=1, edv=2, split="TRAIN")
    assert (videos / "USERS_OWN.avi").read_bytes() == users_bytes  # never deleted nor rewritten

    records = write_phantom_dataset(root, **KW)
    rows = _rows(root)
    names = [r[0] for r in rows[1:]]
    assert len(names) == len(set(names)) == 3 == len(records)
    assert sorted(p.name for p in videos.iterdir()) == sorted([f"{n}.avi" for n in names] + ["USERS_OWN.avi"])
    for name, mtime in first.items():  # finished entries were not rewritten
        assert (videos / name).stat().st_mtime_ns == mtime
    # identical content to an uninterrupted run
    assert [r.ef for r in read_filelist(root)] == [r.ef for r in read_filelist(src_root)]

    # 3) re-running a complete dataset writes nothing
    again = write_phantom_dataset(root, **KW)
    assert [r.file_name for r in again] == names and _rows(root) == rows


def test_writer_skips_existing_names_and_cleans_up(tmp_path):
    frames = np.full((4, 16, 16), 100, np.uint8)
    with EchoNetWriter(tmp_path, ("View",), codec="ffv1") as w:
        rec = w.add("A1", frames, 30, ef=60, esv=40, edv=100, split="train", extra={"View": "A4C"})
        assert rec.split == "TRAIN" and "A1" in w and len(w) == 1
        again = w.add("A1", frames * 0, 30, ef=10, esv=1, edv=2, split="TEST")
        assert again == rec
        with pytest.raises(ValueError, match="no column"):
            w.add("A2", frames, 30, ef=60, esv=40, edv=100, split="TRAIN", extra={"Patient": "x"})
        with pytest.raises(ValueError, match="extension"):
            w.add("A2.avi", frames, 30, ef=60, esv=40, edv=100, split="TRAIN")
        with pytest.raises(ValueError, match="split"):
            w.add("A2", frames, 30, ef=60, esv=40, edv=100, split="DEV")
        with pytest.raises(RuntimeError, match="another process"):
            EchoNetWriter(tmp_path)
    recs = read_filelist(tmp_path)
    assert len(recs) == 1 and recs[0].ef == 60.0 and recs[0].extra == {"View": "A4C"}
    # a complete last row without its newline (hand-edited file) is kept, not cut
    (tmp_path / "FileList.csv").write_text((tmp_path / "FileList.csv").read_text().rstrip("\n"))
    with EchoNetWriter(tmp_path) as w:
        assert len(w) == 1 and not w.truncated_tail and not w.removed_orphans


def test_writer_refuses_foreign_folder(tmp_path):
    write_avi(tmp_path / "Videos" / "X.avi", np.zeros((2, 8, 8), np.uint8), 10, codec="ffv1")
    with pytest.raises(EchoNetFormatError, match="FileList.csv is missing|missing"):
        EchoNetWriter(tmp_path)
    assert (tmp_path / "Videos" / "X.avi").exists()


def test_reads_real_echonet_csv_with_nine_columns(tmp_path):
    (tmp_path / "Videos").mkdir()
    (tmp_path / "FileList.csv").write_text(
        REAL_HEADER
        + "0X100009310A3BD7FC,78.49822222,14.88136802,69.21054921,112,112,50,174,VAL\n"
        + "0X1002E8FBACD08477,59.10198367,40.38324036,98.74296405,112,112,50,215,TRAIN\n"
    )
    recs = read_filelist(tmp_path)
    assert [r.file_name for r in recs] == ["0X100009310A3BD7FC", "0X1002E8FBACD08477"]
    assert recs[0].ef == pytest.approx(78.49822222) and recs[0].number_of_frames == 174
    assert recs[0].split == "VAL" and recs[0].extra == {} and recs[0].patient_id is None
    assert recs[1].video_path(tmp_path) == tmp_path / "Videos" / "0X1002E8FBACD08477.avi"
    with pytest.raises(FileNotFoundError, match="0X100009310A3BD7FC.avi"):
        next(load_echonet_videos(tmp_path))


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "empty file"),
        ("FileName,EF,ESV\nX,1,2\n", "line 1: missing column"),
        (
            REAL_HEADER + "A,55,40,90,112,112,50,100,TRAIN\nB,abc,40,90,112,112,50,100,TRAIN\n",
            "line 3.*B.*EF 'abc'",
        ),
        (REAL_HEADER + "A,55,40,90,112,112,50,100\n", "line 2: 8 fields"),
        (REAL_HEADER + "A,55,40,90,112,112,50,100,HOLDOUT\n", "Split 'HOLDOUT'"),
        (REAL_HEADER + "A,55,40,90,112,112,50,10.5,TRAIN\n", "NumberOfFrames"),
        (REAL_HEADER + "A,55,40,90,112,112,50,100,TRAIN\nA,55,40,90,112,112,50,100,TEST\n", "already listed"),
    ],
)
def test_malformed_csv_errors_name_file_and_row(tmp_path, text, match):
    (tmp_path / "FileList.csv").write_text(text)
    with pytest.raises(EchoNetFormatError, match=match) as info:
        read_filelist(tmp_path)
    assert "FileList.csv" in str(info.value)


def test_missing_folder_and_csv(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_filelist(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="FileList.csv not found"):
        read_filelist(tmp_path)


def test_split_counts_and_argument_checks(tmp_path):
    assert echonet._split_counts(10, (0.8, 0.1, 0.1)) == [8, 1, 1]
    assert echonet._split_counts(3, (0.8, 0.1, 0.1)) == [1, 1, 1]
    assert echonet._split_counts(1, (0.8, 0.1, 0.1)) == [1, 0, 0]
    assert sum(echonet._split_counts(101, (0.7, 0.2, 0.1))) == 101
    with pytest.raises(ValueError, match="views"):
        write_phantom_dataset(tmp_path, 1, views=("A2C",))
    with pytest.raises(ValueError, match="ef_range"):
        write_phantom_dataset(tmp_path, 1, ef_range=(5, 90))


def test_fixed_phase_and_heart_rate_keep_the_efs_and_start_at_end_diastole(tmp_path):
    """The LVFM's training clips: every video starts at ED at one tempo, with the EFs of the default draw."""
    import numpy as np

    from echoflow_models.phantom import PatientAnatomy, render_video
    from echoflow_models.video_io import read_video

    kw = {"seed": 4, "views": ("A4C",), "videos_per_patient": 2, "num_frames": 12, "split_fractions": (1, 0, 0)}
    free = write_phantom_dataset(tmp_path / "free", 2, **kw)
    fixed = write_phantom_dataset(tmp_path / "fixed", 2, phase=0.0, heart_rate=75.0, codec="ffv1", **kw)
    assert [r.ef for r in fixed] == [r.ef for r in free]
    first = fixed[0]
    anatomy = PatientAnatomy.sample(int(first.extra["PatientSeed"]), "A4C")
    expected = render_video(anatomy, first.ef, num_frames=12, phase=0.0, heart_rate=75.0, seed=0)
    assert expected.ed_frames[0] == 0 and expected.heart_rate == 75.0
    frames, _ = read_video(tmp_path / "fixed" / "Videos" / f"{first.file_name}.avi", gray=True)
    err = np.abs(frames.astype(int) - expected.frames).mean(axis=(1, 2))
    at_es = render_video(anatomy, first.ef, num_frames=12, phase=1 / 3, heart_rate=75.0, seed=0)
    assert err.max() < 0.1 < np.abs(frames.astype(int) - at_es.frames).mean()  # codec rounding, not phase
    with pytest.raises(ValueError, match="phase"):
        write_phantom_dataset(tmp_path / "bad", 1, phase=1.5)
    with pytest.raises(ValueError, match="heart_rate"):
        write_phantom_dataset(tmp_path / "bad", 1, heart_rate=300.0)


def test_unknown_volumes_are_blank_cells_read_back_as_nan(tmp_path):
    """Generated videos have an EF label but no ground-truth volumes: they are left blank, never 0."""
    import math

    import numpy as np

    from echoflow_models.echonet import EchoNetWriter, read_filelist

    frames = np.zeros((4, 16, 16), dtype=np.uint8)
    with EchoNetWriter(tmp_path / "ds") as writer:
        writer.add("gen_0", frames, 32.0, 55.0, float("nan"), float("nan"), "TRAIN")
    row = (tmp_path / "ds" / "FileList.csv").read_text().splitlines()[1]
    assert row.startswith("gen_0,55,,,")
    rec = read_filelist(tmp_path / "ds")[0]
    assert rec.ef == 55.0 and math.isnan(rec.esv) and math.isnan(rec.edv)
    with EchoNetWriter(tmp_path / "ds") as writer:
        try:
            writer.add("gen_1", frames, 32.0, float("nan"), 1.0, 2.0, "TRAIN")
        except ValueError as exc:
            assert "ef must be finite" in str(exc)
        else:
            raise AssertionError("a NaN EF must be refused")
