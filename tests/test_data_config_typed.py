"""DataConfig with transforms builds under the test suite's runtime type checker (lists from JSON,
TransformSpec objects re-validated) and round-trips through a TrainConfig."""

from sinkinterp.data.transforms import DataConfig, TransformSpec


def test_dataconfig_with_transforms_from_json_lists_round_trips(tmp_path):
    d = {"shard_dir": str(tmp_path), "seq_len": 16, "batch_size": 2,
         "transforms": [{"kind": "random_tokens", "positions": [0, 1]}, {"kind": "fixed_token", "positions": [2], "token_id": 5}]}
    cfg = DataConfig.from_dict(d)
    assert all(isinstance(t, TransformSpec) for t in cfg.transforms)
    assert cfg.transforms[0].positions == (0, 1) and cfg.transforms[1].token_id == 5
    again = DataConfig.from_dict(cfg.to_dict())
    assert again == cfg
    # re-validating already-built specs works too
    assert DataConfig(shard_dir=str(tmp_path), seq_len=16, transforms=cfg.transforms).transforms == cfg.transforms
