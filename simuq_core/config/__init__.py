"""Typed, validated parameters: the schema of ``params.yaml``.

The library never reads ``params.yaml`` itself: stages load the YAML and call :func:`parse_params`.

- :mod:`.sections`: one strict model per section (``SimulateParams``, ``ModelParams``,
  ``UQParams``, ``FinetuneParams`` …) and ``Params``, the whole file;
- :mod:`.microscope`: ``MicroscopeParams``, the instrument typed once, and where its facts go;
- :mod:`.load`: ``parse_params``, ``parse_section``, ``apply_profile`` (profiles are overlays),
  ``params_hash``;
- :mod:`.base`: ``ParamsError``, ``merge_override``.

Every public name is importable from ``simuq_core.config``.
"""

from simuq_core.config.base import ParamsError, merge_override
from simuq_core.config.load import (
    apply_profile,
    format_validation_error,
    params_hash,
    parse_params,
    parse_section,
    read_sections,
)
from simuq_core.config.microscope import MICROSCOPE_KEYS, MicroscopeParams, apply_microscope
from simuq_core.config.sections import (
    BaselineParams,
    CalibrateParams,
    EpistemicParams,
    ExportDebugParams,
    FinetuneParams,
    LightPatternParams,
    ModelParams,
    NoiseParams,
    ObjectParams,
    OODParams,
    OpticsPrior,
    Params,
    PredictParams,
    PsfParams,
    QualityParams,
    SimulateParams,
    TrainParams,
    UQParams,
)

__all__ = [
    "MICROSCOPE_KEYS", "BaselineParams", "CalibrateParams", "EpistemicParams", "ExportDebugParams",
    "FinetuneParams", "LightPatternParams", "MicroscopeParams", "ModelParams", "NoiseParams", "OODParams",
    "ObjectParams", "OpticsPrior", "Params", "ParamsError", "PredictParams", "PsfParams", "QualityParams",
    "SimulateParams", "TrainParams", "UQParams", "apply_microscope", "apply_profile",
    "format_validation_error", "merge_override", "params_hash", "parse_params", "parse_section",
    "read_sections",
]
