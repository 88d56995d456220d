"""Face data: insightface RecordIO and verification bins, image folders, CelebA files.

Alignment (`facekd.data.align`), batch transforms (`facekd.data.transforms`) and the training adapter
(`facekd.data.training`) are imported from their modules, so `import facekd.data` stays free of torch
and scikit-image.
"""

from facekd.data.celeba import (
    Attributes,
    Identities,
    Landmarks,
    read_attributes,
    read_identities,
    read_landmarks,
    write_attributes,
    write_identities,
    write_landmarks,
)
from facekd.data.codec import decode_image, encode_jpeg
from facekd.data.face_rec import FaceRecInfo, RecordIODataset, write_face_rec
from facekd.data.folders import ImageFolderDataset, ListFileDataset
from facekd.data.pairs_bin import EncodedImages, load_pairs_bin, write_pairs_bin
from facekd.data.recordio import IndexedRecordFile, IRHeader, RecordWriter, pack_payload, unpack_payload

__all__ = [
    "Attributes",
    "EncodedImages",
    "FaceRecInfo",
    "IRHeader",
    "Identities",
    "ImageFolderDataset",
    "IndexedRecordFile",
    "Landmarks",
    "ListFileDataset",
    "RecordIODataset",
    "RecordWriter",
    "decode_image",
    "encode_jpeg",
    "load_pairs_bin",
    "pack_payload",
    "read_attributes",
    "read_identities",
    "read_landmarks",
    "unpack_payload",
    "write_attributes",
    "write_face_rec",
    "write_identities",
    "write_landmarks",
    "write_pairs_bin",
]
