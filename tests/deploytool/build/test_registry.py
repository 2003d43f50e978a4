import pytest

from deploytool.build import registry
from deploytool.errors import DeployError

SWINIR_IDS = {
    *(f"swinir-m-x{s}" for s in (2, 3, 4, 8)),
    *(f"swinir-s-x{s}" for s in (2, 3, 4)),
    "swinir-real-m-x4",
    "swinir-real-l-x4",
    *(f"swinir-dn-{c}-{n}" for c in ("color", "gray") for n in (15, 25, 50)),
    *(f"swinir-car-{c}-{q}" for c in ("color", "gray") for q in (10, 20, 30, 40)),
}


def test_every_swinir_id_is_registered_with_its_official_file():
    entries = registry.all_entries()
    assert SWINIR_IDS <= set(entries)
    for model_id in SWINIR_IDS:
        entry = entries[model_id]
        assert entry.weights.url.startswith("https://github.com/JingyunLiang/SwinIR/releases/download/")
        assert entry.weights.url.endswith(entry.weights.filename)
        assert entry.arch.get("upscale", 1) == entry.scale
        assert entry.tiling.tile[0] % entry.tiling.tile_multiple == 0
        assert entry.channels == entry.arch.get("in_chans", 3)


def test_variant_files_inherit_and_override_their_base():
    car = registry.get("swinir-car-gray-40")
    assert car.arch["window_size"] == 7 and car.arch["img_range"] == 255.0 and car.arch["in_chans"] == 1
    assert car.arch["mlp_ratio"] == 2.0  # from _swinir.toml, two bases up
    assert car.tiling.tile == (126, 126) and car.tiling.tile_multiple == 7
    assert registry.get("swinir-real-l-x4").arch["resi_connection"] == "3conv"
    assert registry.get("swinir-m-x4").arch["resi_connection"] == "1conv"


def test_config_path_adds_ids_and_rejects_duplicates(tmp_path, monkeypatch):
    (tmp_path / "extra.toml").write_text('id = "my-swinir"\nbase = "_x"\n')
    (tmp_path / "_x.toml").write_text('family = "swinir"\ntask = "sr"\nscale = 2\nchannels = 3\ntile = 32\n[arch]\nupscale = 2\n')
    monkeypatch.setenv("DEPLOYTOOL_CONFIG_PATH", str(tmp_path))
    assert registry.get("my-swinir").tiling.tile == (32, 32)
    (tmp_path / "dup.toml").write_text('id = "swinir-m-x4"\nbase = "_x"\n')
    registry._load_all.cache_clear()  # configs are read once per process
    with pytest.raises(DeployError, match="defined twice"):
        registry.all_entries()


def test_bad_configs_and_ids_give_one_line_errors(tmp_path, monkeypatch):
    (tmp_path / "bad.toml").write_text('id = "x"\nfamily = "swinir"\ntask = "painting"\n')
    monkeypatch.setenv("DEPLOYTOOL_CONFIG_PATH", str(tmp_path))
    with pytest.raises(DeployError, match="task 'painting'"):
        registry.all_entries()
    monkeypatch.delenv("DEPLOYTOOL_CONFIG_PATH")
    with pytest.raises(DeployError, match="did you mean"):
        registry.get("swinir-m-x5")


@pytest.mark.parametrize("unsafe", ["../evil", "/abs", "a/b", ".hidden", "x" * 65])
def test_a_config_whose_id_is_not_a_plain_name_is_refused_in_one_line(tmp_path, monkeypatch, unsafe):
    (tmp_path / "evil.toml").write_text(f'id = "{unsafe}"\nfamily = "swinir"\ntask = "sr"\nscale = 2\nchannels = 3\ntile = 32\n[arch]\nupscale = 2\n')
    monkeypatch.setenv("DEPLOYTOOL_CONFIG_PATH", str(tmp_path))
    with pytest.raises(DeployError, match=r"model config .*evil\.toml: model_id .*is not a model id") as caught:
        registry.all_entries()
    assert "\n" not in str(caught.value)


def test_tiles_must_be_window_multiples():
    entry = registry.get("swinir-m-x4")
    entry.check_tile((96, 160))
    with pytest.raises(DeployError, match="try 104"):
        entry.check_tile((100, 96))


def test_one_id_per_family_is_the_first_single_image_id_of_each():
    import model_defs

    chosen = registry.one_id_per_family()
    entries = registry.all_entries()
    assert sorted(entries[i].family for i in chosen) == sorted(model_defs.families())
    for model_id in chosen:
        entry = entries[model_id]
        assert len(entry.views) == 1
        assert model_id == min(i for i, e in entries.items() if e.family == entry.family and len(e.views) == 1)
