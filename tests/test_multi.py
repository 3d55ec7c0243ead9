"""A SCHEDULE stage picks the backend among several wrapped pipelines, per request."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from tiny import tiny_sd_pipeline

from trustgain import GenerationRequest
from trustgain.errors import ConfigError, GeneratorError
from trustgain.generators import DiffusersGenerator, MultiGenerator
from trustgain.pipeline import TrustPipeline
from trustgain.stage import build_stage

SD = dict(height=16, width=16, output_type="np")


def test_schedule_stage_chooses_backend_and_steps(sd_pipe, keyring):
    other = tiny_sd_pipeline(seed=1)
    full = build_stage("schedule.backend_steps")
    stage = dataclasses.replace(full, backends=full.backends[:2])  # the two served here
    names = [b.name for b in stage.backends]
    with pytest.raises(ConfigError, match="does not serve"):  # a profile with no pipeline
        TrustPipeline(MultiGenerator({n: DiffusersGenerator(sd_pipe, model_id=n)
                                      for n in names}, default=names[0]), [full],
                      keyring=keyring)
    multi = MultiGenerator(
        {
            names[0]: DiffusersGenerator(sd_pipe, model_id=names[0]),
            names[1]: DiffusersGenerator(other, model_id=names[1]),
        },
        default=names[0],
    )
    art = TrustPipeline(multi, [stage], keyring=keyring)("a cat", seed=3, **SD)
    record = art.record.record
    decision = record["stages"][0]["params"]
    assert decision["backend"] in names and decision["num_inference_steps"] in stage.steps
    assert art.request.backend == decision["backend"]
    assert art.request.num_inference_steps == decision["num_inference_steps"]
    chosen = sd_pipe if decision["backend"] == names[0] else other
    bare = chosen(
        "a cat",
        generator=torch.Generator().manual_seed(3),
        num_inference_steps=decision["num_inference_steps"],
        **SD,
    ).images
    assert np.array_equal(np.stack(art.outputs), bare)  # the chosen pipeline ran, unchanged
    assert set(record["generator"]["backends"]) == set(names[:2])
    assert art.files == ()  # np outputs: nothing to encode


def test_unknown_backend_and_single_generator_refuse(sd_pipe):
    multi = MultiGenerator({"a": DiffusersGenerator(sd_pipe)}, default="a")
    with pytest.raises(GeneratorError, match="unknown backend 'b'; known: a"):
        multi.pick(GenerationRequest(backend="b"))
    with pytest.raises(GeneratorError, match="use MultiGenerator"):
        DiffusersGenerator(sd_pipe, model_id="x").kwargs(GenerationRequest(backend="y"))
    with pytest.raises(ConfigError, match="default backend"):
        MultiGenerator({"a": DiffusersGenerator(sd_pipe)}, default="z")
