"""FID and KID (issue 21 item 5, issue 22 Table III) through torchmetrics, checked against
torch-fidelity's own reference computation: on features we construct (where FID also has a
closed form), and end to end on real photos through a random-weight FID Inception written in the
real format (pytorch-fid's release: torchvision's Inception v3 keys, 1008 classes). Random
weights give numbers that mean nothing about image quality; what is tested is that ours are the
library's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from models.weights import FID_INCEPTION
from orchestrator.evaluation.quality import InceptionFeatures, distances, fid_kid

PHOTOS = ["id01_5.jpg", "id01_11.jpg", "id02_12.jpg", "id02_55.jpg", "id03_16.jpg", "id03_62.jpg"]


def test_fid_and_kid_equal_torch_fidelity_on_constructed_features():
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric

    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, (300, 16)), rng.normal(0.5, 1.0, (300, 16))
    fid, kid = distances(a, b, subsets=3)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    reference = fid_statistics_to_metric(fid_features_to_statistics(ta), fid_features_to_statistics(tb), False)
    assert fid["fid"] == pytest.approx(reference["frechet_inception_distance"], rel=1e-9)
    # subsets of all 300 rows: every subset is the whole set, so both estimators are exact
    ref_kid = kid_features_to_metric(
        ta, tb, kid_subsets=3, kid_subset_size=300, kid_degree=3, kid_gamma=None, kid_coef0=1, verbose=False, rng_seed=1
    )
    assert kid["kid"] == pytest.approx(ref_kid["kernel_inception_distance_mean"], rel=1e-9)
    # the closed form: two unit Gaussians 0.5 apart in each of 4 dimensions, FID -> 4 * 0.25
    big, _ = distances(rng.normal(0, 1, (4000, 4)), rng.normal(0.5, 1.0, (4000, 4)), subsets=1)
    assert big["fid"] == pytest.approx(1.0, abs=0.1)
    same, _ = distances(a, a, subsets=1)
    assert same["fid"] == pytest.approx(0.0, abs=1e-6)


@pytest.fixture(scope="module")
def random_inception(tmp_path_factory):
    import torchvision

    models = tmp_path_factory.mktemp("fid-models")
    torch.manual_seed(0)
    net = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    (models / FID_INCEPTION).parent.mkdir(parents=True)
    torch.save(net.state_dict(), models / FID_INCEPTION)
    return models


def test_fid_kid_on_real_photos_equal_torch_fidelity_with_the_same_weights(random_inception, faces_dir, tmp_path):
    import torch_fidelity

    # the photos at 96 px (one size: torch-fidelity batches them), and a blurred copy of each
    sides = {"real": tmp_path / "real", "blur": tmp_path / "blur"}
    for folder in sides.values():
        folder.mkdir()
    images: dict[str, list[np.ndarray]] = {"real": [], "blur": []}
    from PIL import ImageFilter

    for name in PHOTOS:
        img = Image.open(faces_dir / name).convert("RGB").resize((96, 96), Image.Resampling.BICUBIC)
        for side, version in (("real", img), ("blur", img.filter(ImageFilter.GaussianBlur(4)))):
            version.save(sides[side] / (name[:-4] + ".png"))
            images[side].append(np.asarray(version))
    net = InceptionFeatures(random_inception / FID_INCEPTION)
    ours = fid_kid(
        [net.features(x) for x in images["real"]], [net.features(x) for x in images["blur"]], random_inception
    )
    reference = torch_fidelity.calculate_metrics(
        input1=str(sides["real"]),
        input2=str(sides["blur"]),
        fid=True,
        kid=True,
        kid_subsets=2,
        kid_subset_size=len(PHOTOS),
        feature_extractor_weights_path=str(random_inception / FID_INCEPTION),
        cuda=False,
        cache=False,
        verbose=False,
        batch_size=len(PHOTOS),
    )
    assert ours["n_originals"] == ours["n_anonymized"] == len(PHOTOS)
    assert np.isfinite(ours["fid"]) and ours["fid"] > 0
    assert ours["fid"] == pytest.approx(reference["frechet_inception_distance"], rel=1e-3)
    assert ours["kid"] == pytest.approx(reference["kernel_inception_distance_mean"], rel=1e-3, abs=1e-9)


def test_fid_kid_say_why_they_are_skipped(tmp_path):
    out = fid_kid([np.zeros(4)] * 3, [np.zeros(4)] * 3, tmp_path)
    assert "absent" in out["skipped"] and "veil models fetch --eval" in out["skipped"]
