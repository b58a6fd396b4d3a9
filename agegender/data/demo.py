"""Miniature copies of every supported source layout, built from the sample photo that ships inside
the `insightface` wheel (t1.jpg: six real faces), with bad files mixed in.

Used by the tests and by `make demo`; needs no download. Labels are made up for the layout, the
faces are real, so the detector and aligner do real work on them.
"""
from __future__ import annotations

import os

import numpy as np

from agegender.data.image import encode_jpeg, read_image


def wheel_image(name: str) -> str:
    """Path of an image bundled in the insightface wheel (e.g. t1.jpg, Tom_Hanks_54745.png)."""
    import insightface

    path = os.path.join(os.path.dirname(insightface.__file__), "data", "images", name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{name} not found in the insightface wheel ({path})")
    return path


def face_crops(margin: float = 0.9) -> list[np.ndarray]:
    """The six faces of t1.jpg, left to right, each cropped with `margin` x its box size around it."""
    from agegender.data.face import load_detector

    img = read_image(wheel_image("t1.jpg"))
    faces = sorted(load_detector(thresh=0.8).detect(img), key=lambda f: f.box[0])
    crops = []
    for f in faces:
        x1, y1, x2, y2 = f.box
        w, h = x2 - x1, y2 - y1
        x1, x2 = int(max(0, x1 - margin * w)), int(min(img.shape[1], x2 + margin * w))
        y1, y2 = int(max(0, y1 - margin * h)), int(min(img.shape[0], y2 + margin * h))
        crops.append(np.ascontiguousarray(img[y1:y2, x1:x2]))
    return crops


def _save(path: str, rgb: np.ndarray | None = None, data: bytes | None = None) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(encode_jpeg(rgb) if data is None else data)


def build_demo_sources(root: str) -> dict[str, str]:
    """Write miniature AFAD, MegaAge, AgeDB, UTKFace, All-Age-Faces, FairFace and list sources under root.

    Returns {source: path}. Each holds real faces plus bad inputs (empty, truncated, not an image,
    malformed names and lines), so a packing run exercises every skip reason.
    """
    faces = face_crops()
    face = lambda i, flip=False: faces[i % len(faces)][:, ::-1] if flip else faces[i % len(faces)]  # noqa: E731
    truncated = encode_jpeg(faces[0])[:-600]
    paths = {k: os.path.join(root, k) for k in ("afad", "megaage", "agedb", "utkface", "aaf")}
    paths["list"] = os.path.join(root, "list", "labels.csv")

    # AFAD: <age>/<111 male|112 female>/<id>-<n>.jpg; person 100 appears at two ages.
    afad = paths["afad"]
    for age, g, name, i in [(25, "111", "100-1.jpg", 0), (26, "111", "100-2.jpg", 0), (31, "112", "101-1.jpg", 1),
                            (42, "111", "102-1.jpg", 2), (42, "112", "103-1.jpg", 3), (19, "112", "104-1.jpg", 4)]:
        _save(os.path.join(afad, str(age), g, name), face(i))
    _save(os.path.join(afad, "abc", "111", "105-1.jpg"), face(5))          # bad_age
    _save(os.path.join(afad, "30", "113", "106-1.jpg"), face(5))           # bad_gender
    _save(os.path.join(afad, "30", "111", "107-1.jpg"), data=b"")          # empty_file
    _save(os.path.join(afad, "30", "112", "108-1.jpg"), data=truncated)    # truncated

    # MegaAge: train/ and test/ images, list/{train,test}_{name,age}.txt, no gender.
    mega = paths["megaage"]
    for i in range(4):
        _save(os.path.join(mega, "train", f"{i + 1}.jpg"), face(i, flip=True))
    for i in range(2):
        _save(os.path.join(mega, "test", f"{i + 1}.jpg"), face(i + 4, flip=True))
    _save(os.path.join(mega, "train", "5.jpg"), data=b"this is not a jpeg at all")  # not_image
    os.makedirs(os.path.join(mega, "list"), exist_ok=True)
    lists = {"train_name.txt": "1.jpg\n2.jpg\n3.jpg\n4.jpg\n5.jpg\n6.jpg\n", "train_age.txt": "8\n23\nold\n57\n30\n12\n",
             "test_name.txt": "1.jpg\n2.jpg\n", "test_age.txt": "35\n3\n"}
    for name, text in lists.items():  # train 3 has a non-numeric age, train 6.jpg does not exist
        with open(os.path.join(mega, "list", name), "w") as f:
            f.write(text)

    # AgeDB: <id>_<Name>_<age>_<m|f>.jpg; two people with two images each.
    agedb = paths["agedb"]
    for name, i in [("0_AnnaSmith_35_f.jpg", 0), ("1_AnnaSmith_41_f.jpg", 1), ("2_JohnDoe_60_m.jpg", 2),
                    ("3_JohnDoe_62_m.jpg", 3), ("4_MaxPower_28_m.jpg", 4), ("5_EveAdams_51_f.jpg", 5)]:
        _save(os.path.join(agedb, name), face(i, flip=True))
    _save(os.path.join(agedb, "6_NoAge_m.jpg"), face(0))                   # bad_name

    # UTKFace: <age>_<gender 0=male,1=female>_<race>_<date>.jpg.chip.jpg
    utk = paths["utkface"]
    for name, i in [("26_0_0_20170116174525125.jpg.chip.jpg", 0), ("34_1_1_20170116174525126.jpg.chip.jpg", 1),
                    ("3_0_2_20170116174525127.jpg.chip.jpg", 2), ("71_1_3_20170116174525128.jpg.chip.jpg", 3),
                    ("105_0_0_20170116174525129.jpg.chip.jpg", 4)]:
        _save(os.path.join(utk, name), face(i))
    _save(os.path.join(utk, "39_1_20170116174525130.jpg.chip.jpg"), face(5))  # bad_name: race missing
    _save(os.path.join(utk, "44_2_0_20170116174525131.jpg.chip.jpg"), face(5))  # bad_gender

    # All-Age-Faces: 'original images/<id>A<age>.jpg'; genders (0 = female, 1 = male) in 'image sets/'.
    aaf = paths["aaf"]
    images = os.path.join(aaf, "original images")
    for name, i in [("00012A05.jpg", 0), ("00340A27.jpg", 1), ("07390A08.jpg", 2), ("08001A45.jpg", 3),
                    ("09100A63.jpg", 4), ("00500A33.jpg", 5)]:
        _save(os.path.join(images, name), face(i))
    _save(os.path.join(images, "00600A19.jpg"), face(1, flip=True))        # unlisted: no gender
    _save(os.path.join(images, "00700A21.jpg"), data=truncated)            # truncated
    _save(os.path.join(images, "photo.jpg"), face(2, flip=True))           # bad_name (listed below)
    os.makedirs(os.path.join(aaf, "image sets"), exist_ok=True)
    with open(os.path.join(aaf, "image sets", "train_.txt"), "w") as f:
        f.write("00012A05.jpg 0\n00340A27.jpg 0\n07390A08.jpg 1\n08001A45.jpg 1\n00700A21.jpg 0\n"
                "00340A27.jpg 0\nphoto.jpg 1\n00800A30.jpg 0\nno gender here\n")
    with open(os.path.join(aaf, "image sets", "val_.txt"), "w") as f:
        f.write("09100A63.jpg 1\n00500A33.jpg 2\n\n")

    # A path,gender,age list with a header, comments and bad lines.
    lst_dir = os.path.dirname(paths["list"])
    for i in range(3):
        _save(os.path.join(lst_dir, "img", f"p{i}.jpg"), face(i + 3))
    with open(paths["list"], "w") as f:
        f.write("path,gender,age\n# custom faces\nimg/p0.jpg,m,33\nimg/p1.jpg,0,27\nimg/p2.jpg,-1,48\n"
                "img/missing.jpg,f,20\nimg/p0.jpg,x,20\nimg/p1.jpg,1,-4\nnot a valid line\n")
    paths["fairface"] = build_demo_fairface(os.path.join(root, "fairface"), faces)
    return paths


# (file, age group, gender, race) of the miniature FairFace layout; the bad rows are skipped when packed
DEMO_FAIRFACE_TRAIN = [("train/1.jpg", "20-29", "Male", "Black"), ("train/2.jpg", "3-9", "Female", "Indian"),
                       ("train/3.jpg", "more than 70", "Female", "East Asian"), ("train/4.jpg", "50-59", "Male", "White"),
                       ("train/5.jpg", "10-19", "Female", "Latino_Hispanic"), ("train/6.jpg", "0-2", "Male", "Southeast Asian"),
                       ("train/7.jpg", "03-Sep", "Male", "White"),         # bad_age: a spreadsheet's date
                       ("train/8.jpg", "30-39", "Unknown", "White"),       # bad_gender
                       ("train/9.jpg", "40-49", "Male", "Middle Eastern")]  # the file is missing
DEMO_FAIRFACE_VAL = [("val/1.jpg", "30-39", "Female", "White"), ("val/2.jpg", "60-69", "Male", "Black")]


def build_demo_fairface(root: str, faces: list[np.ndarray] | None = None) -> str:
    """A miniature FairFace layout (`train/`, `val/`, `fairface_label_{train,val}.csv`) made of the insightface
    wheel's faces, never FairFace's images; with a spreadsheet-damaged age group, an unknown gender and a
    missing file among its rows. Returns root."""
    faces = faces or face_crops()
    for i, (name, *_rest) in enumerate(DEMO_FAIRFACE_TRAIN[:6] + DEMO_FAIRFACE_VAL):
        _save(os.path.join(root, name), faces[i % len(faces)])
    _save(os.path.join(root, "train", "7.jpg"), faces[0][:, ::-1])
    _save(os.path.join(root, "train", "8.jpg"), faces[1][:, ::-1])
    for subset, rows in (("train", DEMO_FAIRFACE_TRAIN), ("val", DEMO_FAIRFACE_VAL)):
        with open(os.path.join(root, f"fairface_label_{subset}.csv"), "w", encoding="utf-8") as f:
            f.write("file,age,gender,race,service_test\n")
            f.writelines(f"{n},{a},{g},{r},True\n" for n, a, g, r in rows)
    return root


def aligned_demo_faces() -> np.ndarray:
    """Real aligned faces that need no download: the six of t1.jpg (detected and aligned as infer.py does)
    and the wheel's aligned Tom Hanks; (7,3,112,112) float32 RGB 0-255, a network's input."""
    from agegender.data.face import align_face, load_detector

    img = read_image(wheel_image("t1.jpg"))
    faces = sorted(load_detector(thresh=0.8).detect(img), key=lambda f: f.box[0])
    crops = [align_face(img, f.landmarks) for f in faces] + [read_image(wheel_image("Tom_Hanks_54745.png"))]
    return np.stack(crops).transpose(0, 3, 1, 2).astype(np.float32)


def pan_and_zoom(photo: str, path: str, size=(640, 360), frames: int = 60, fps: float = 25.0,
                 zoom: float = 0.05) -> list[np.ndarray]:
    """A video of a slow pan and zoom across `photo` (a 16:9 window), written with cv2.VideoWriter; returns
    the affine maps (photo -> frame) of each frame."""
    import cv2

    img = cv2.imread(photo)
    ph, pw = img.shape[:2]
    w, h = size
    maps = []
    out = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for i in range(frames):
        t = i / max(1, frames - 1)
        s = 1.0 - zoom * np.sin(np.pi * t)
        cw = min(pw, ph * 16 / 9) * s
        ch = cw * 9 / 16
        x0, y0 = (pw - cw) * (0.3 + 0.4 * t), (ph - ch) * 0.2 * t  # t1's six faces stay in view
        m = np.array([[w / cw, 0, -x0 * w / cw], [0, h / ch, -y0 * h / ch]])
        out.write(cv2.warpAffine(img, m, (w, h)))
        maps.append(m)
    out.release()
    return maps


def synthetic_face_image(size: int = 112) -> np.ndarray:
    """A colour test card: red, green, blue and white quadrants (RGB), for colour round-trip checks."""
    img = np.zeros((size, size, 3), np.uint8)
    h = size // 2
    img[:h, :h] = (255, 0, 0)
    img[:h, h:] = (0, 255, 0)
    img[h:, :h] = (0, 0, 255)
    img[h:, h:] = (255, 255, 255)
    return img


if __name__ == "__main__":
    import sys

    out = sys.argv[1] if len(sys.argv) > 1 else "dataset/demo_raw"
    for k, v in build_demo_sources(out).items():
        print(f"{k:8s} {v}")
