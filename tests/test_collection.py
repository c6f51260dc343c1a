import numpy as np
import pytest

from pipeline.collection import (
    ImageFile,
    build_inventory,
    load_inventory,
    parse_ids,
    read_mapping,
    save_inventory,
    scan_content,
    strip_ppn,
)
from pipeline.errors import CollectionError, MappingError

from .conftest import as_ordinary_user


def touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_scan_lists_images_one_level_down_and_skips_the_rest(tmp_path):
    for name in [
        "PPN1/b.jpg",
        "PPN1/a.PNG",
        "PPN2/c.tif",
        "PPN1/.hidden.jpg",
        "PPN1/Thumbs.db",
        "PPN1/meta.xml",
        "image_ids.csv",
        "loose.jpg",
        "other/d.jpg",
        "PPN2/sub/e.jpg",
    ]:
        touch(tmp_path / name)
    files = scan_content(tmp_path)
    assert [f.relpath for f in files] == ["PPN1/a.PNG", "PPN1/b.jpg", "PPN2/c.tif"]
    assert files[0].ppn == "1" and files[0].size == 1


def test_scan_of_a_missing_folder_names_the_setting(tmp_path):
    with pytest.raises(CollectionError, match=r"\[paths\] content"):
        scan_content(tmp_path / "nope")


def test_key_changes_with_the_file():
    a = ImageFile("1", "a.jpg", 10, 100)
    assert a.key != ImageFile("1", "a.jpg", 11, 100).key != ImageFile("1", "a.jpg", 10, 101).key


@pytest.mark.parametrize("value, expected", [("PPN123", "123"), ("123", "123"), (" ppn77X ", "77X")])
def test_strip_ppn(value, expected):
    assert strip_ppn(value) == expected


def write_csv(tmp_path, text):
    path = tmp_path / "ids.csv"
    path.write_text(text)
    return path


def test_read_mapping_normalises_ppn_and_whitespace(tmp_path):
    frame = read_mapping(write_csv(tmp_path, "id, ppn ,filename\n7, PPN1 ,a.jpg\n8,2,b.jpg\n"))
    assert frame.values.tolist() == [["7", "1", "a.jpg", "PPN1"], ["8", "2", "b.jpg", "PPN2"]]


def test_a_record_column_names_the_catalogue_record_and_an_empty_one_falls_back_to_the_ppn(tmp_path):
    for name in ["PPN1/a.jpg", "PPN1/b.jpg", "PPN2/c.jpg"]:
        touch(tmp_path / name)
    text = "id,ppn,filename,record\n1,1,a.jpg,work-7\n2,1,b.jpg,\n3,2,c.jpg, work-7 \n"
    inventory = build_inventory(scan_content(tmp_path), read_mapping(write_csv(tmp_path, text)))
    assert inventory.records == ["work-7", "PPN1", "work-7"]
    assert inventory.records_of(["PPN2/c.jpg", "PPN1/b.jpg"]).tolist() == ["work-7", "PPN1"]
    plain = build_inventory(
        scan_content(tmp_path), read_mapping(write_csv(tmp_path, "id,ppn,filename\n1,1,a.jpg\n2,1,b.jpg\n3,2,c.jpg\n"))
    )
    assert plain.records == ["PPN1", "PPN1", "PPN2"] and plain.fingerprint() != inventory.fingerprint()
    save_inventory(tmp_path / "inv.h5", inventory, {"digest": "x"})
    assert load_inventory(tmp_path / "inv.h5").records == inventory.records


@pytest.mark.parametrize(
    "text, message",
    [
        ("id,filename\n1,a.jpg\n", "lacks the column.*ppn"),
        ("id,ppn,filename\n1,PPN1,a.jpg\n1,PPN1,b.jpg\n", "same ID on lines 2, 3"),
        ("id,ppn,filename\n1,PPN1,a.jpg\n2,1,a.jpg\n", r"same \(ppn, filename\) pair on lines 2, 3"),
        ("id,ppn,filename\n1,PPN1,a.jpg\n2,,b.jpg\n", "empty or NULL values on line.* 3"),
    ],
)
def test_read_mapping_rejects_bad_mappings_in_one_line(tmp_path, text, message):
    with pytest.raises(MappingError, match=message) as info:
        read_mapping(write_csv(tmp_path, text))
    assert "\n" not in str(info.value)


def test_read_mapping_of_a_missing_file_names_the_setting(tmp_path):
    with pytest.raises(MappingError, match=r"\[ids\] csv"):
        read_mapping(tmp_path / "none.csv")


def test_inventory_keeps_mapped_files_and_lists_the_others(tmp_path):
    for name in ["PPN1/a.jpg", "PPN1/b.jpg", "PPN2/c.jpg"]:
        touch(tmp_path / name)
    mapping = read_mapping(write_csv(tmp_path, "id,ppn,filename\n30,PPN2,c.jpg\n10,1,a.jpg\n20,1,gone.jpg\n"))
    inventory = build_inventory(scan_content(tmp_path), mapping)
    assert [f.relpath for f in inventory.files] == ["PPN1/a.jpg", "PPN2/c.jpg"]
    assert inventory.ids.tolist() == [10, 30] and inventory.ids.dtype == np.int64
    assert inventory.unmapped == ["PPN1/b.jpg"]
    assert inventory.missing == ["20 PPN1/gone.jpg"]

    save_inventory(tmp_path / "inv.h5", inventory, {"digest": "x"})
    again = load_inventory(tmp_path / "inv.h5")
    assert again.files == inventory.files and again.ids.tolist() == [10, 30]
    assert again.unmapped == inventory.unmapped and again.missing == inventory.missing


@pytest.mark.parametrize(
    "values, dtype",
    [(["1", "-2", "30"], np.int64), (["1", "a"], np.str_), (["99999999999999999999"], np.str_), (["1.0"], np.str_)],
)
def test_ids_are_integers_only_when_all_fit_int64(values, dtype):
    ids = parse_ids(values)
    assert ids.dtype.type is dtype
    assert [str(v) for v in ids] == values


@pytest.mark.parametrize("fingerprint", ["stat", "sha256"])
def test_scan_lists_dangling_links_and_loops_for_rejection(tmp_path, fingerprint):
    touch(tmp_path / "PPN1" / "a.jpg")
    (tmp_path / "PPN1" / "gone.jpg").symlink_to(tmp_path / "PPN1" / "nowhere.jpg")
    (tmp_path / "PPN1" / "loop.jpg").symlink_to(tmp_path / "PPN1" / "loop.jpg")
    (tmp_path / "PPN1" / "folder.jpg").mkdir()
    files = scan_content(tmp_path, fingerprint)
    assert [f.relpath for f in files] == ["PPN1/a.jpg", "PPN1/gone.jpg", "PPN1/loop.jpg"]
    assert len({f.key for f in files}) == 3


@pytest.mark.parametrize("fingerprint", ["stat", "sha256"])
def test_files_without_read_permission_are_listed_and_of_an_unreadable_folder_the_mapped_ones(
    shared_dir, caplog, fingerprint
):
    for name in ["PPN1/a.jpg", "PPN1/locked.jpg", "PPN2/b.jpg", "PPN2/c.jpg"]:
        touch(shared_dir / name)
    for path in (shared_dir, shared_dir / "PPN1", shared_dir / "PPN1" / "a.jpg"):
        path.chmod(0o755)
    (shared_dir / "PPN1" / "locked.jpg").chmod(0o000)
    (shared_dir / "PPN2").chmod(0o000)
    with as_ordinary_user():
        files = scan_content(shared_dir, fingerprint=fingerprint, mapped=[("1", "a.jpg"), ("2", "b.jpg")])
    # locked and PPN2/b.jpg exist as far as can be seen: rejected with the reason when decoded, not "missing"
    assert [f.relpath for f in files] == ["PPN1/a.jpg", "PPN1/locked.jpg", "PPN2/b.jpg"]
    if fingerprint == "sha256":
        assert files[1].sha256 == files[2].sha256 == "unreadable-13"
    assert "cannot list PPN2 (Permission denied): only its mapped files are looked for" in caplog.text


def test_the_mapping_decides_what_an_image_is_and_missing_means_no_such_file(tmp_path):
    names = [
        "Iggy.1024.ppm",
        "baboon.pgm",
        "marbles.pbm",
        "x.pnm",
        "a.j2k",
        "b.jpf",
        "c.jpx",
        "d.tga",
        "E.TIFF",
        "no extension",
        "notes.txt",
        ".hidden.jpg",
        "folder.jpg",
    ]
    for name in names[:-1]:
        touch(tmp_path / "PPN1" / name)
    (tmp_path / "PPN1" / "folder.jpg").mkdir()
    for name in ["Thumbs.db", "meta.xml", "unmapped.PGM", "noext"]:
        touch(tmp_path / "PPN2" / name)
    rows = "".join(f"{i},PPN1,{name}\n" for i, name in enumerate(names)) + "99,PPN1,gone.ppm\n98,PPN3,x.jpg\n"
    mapping = read_mapping(write_csv(tmp_path, "id,ppn,filename\n" + rows))
    inventory = build_inventory(
        scan_content(tmp_path, mapped=mapping[["ppn", "filename"]].itertuples(index=False)), mapping
    )
    assert sorted(f.filename for f in inventory.files) == sorted(names)  # each decoded, or rejected with its reason
    assert inventory.missing == ["99 PPN1/gone.ppm", "98 PPN3/x.jpg"]
    assert inventory.unmapped == ["PPN2/unmapped.PGM"]  # the extension list decides only which unmapped files to list
