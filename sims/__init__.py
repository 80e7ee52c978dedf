"""sims: experiments built on ``theory`` — configs in, tidy pandas tables out."""

from theory import (
    rate_prediction as rate_prediction,  # re-exported: the P6 formula lives in theory
)

from ._finetune import JOINED_METHODS as JOINED_METHODS
from ._finetune import finetune_comparison as finetune_comparison
from ._finetune import finetune_summary as finetune_summary
from ._landscape import CLARABEL_TOL as CLARABEL_TOL
from ._landscape import RECOVERY_TOL as RECOVERY_TOL
from ._landscape import RECOVERY_TOL_CONVEX as RECOVERY_TOL_CONVEX
from ._landscape import convex_certificate_margin as convex_certificate_margin
from ._landscape import convex_recovery_table as convex_recovery_table
from ._landscape import critical_spectra_table as critical_spectra_table
from ._landscape import descent_paths_table as descent_paths_table
from ._landscape import recovery_phase_table as recovery_phase_table
from ._landscape import saddle_slice_table as saddle_slice_table
from ._landscape import solve_psd_relaxation as solve_psd_relaxation
from ._linear import INT_FIELDS as INT_FIELDS
from ._linear import KNOBS as KNOBS
from ._linear import METHODS as METHODS
from ._linear import VARIABLE as VARIABLE
from ._linear import PRESETS as PRESETS
from ._linear import SWEEPS as SWEEPS
from ._linear import LinearConfig as LinearConfig
from ._linear import linear_sweep as linear_sweep
from ._linear import linear_truth as linear_truth
from ._linear import simulate_chunk as simulate_chunk
from ._linear import simulate_chunks as simulate_chunks
from ._loraone import init_comparison_table as init_comparison_table
from ._loraone import kappa_iterations_table as kappa_iterations_table
from ._loraone import two_parameter_table as two_parameter_table
from ._loraone import vanilla_alpha_table as vanilla_alpha_table
from ._peftml import FINETUNING_SCHEMES as FINETUNING_SCHEMES
from ._peftml import RETRAINING_METHODS as RETRAINING_METHODS
from ._peftml import BatchLoader as BatchLoader
from ._peftml import FineTuned as FineTuned
from ._peftml import LoraSpec as LoraSpec
from ._peftml import OptimSpec as OptimSpec
from ._peftml import ReptileSpec as ReptileSpec
from ._peftml import Retrained as Retrained
from ._peftml import attach_lora as attach_lora
from ._convai import CONVAI_HELP as CONVAI_HELP
from ._convai import CONVAI_RANKS as CONVAI_RANKS
from ._convai import ConvAIConfig as ConvAIConfig
from ._convai import check_convai_inputs as check_convai_inputs
from ._convai import convai_summary as convai_summary
from ._convai import persona_clusters as persona_clusters
from ._convai import persona_key as persona_key
from ._convai import read_persona_map as read_persona_map
from ._convai import read_personachat as read_personachat
from ._convai import simulate_convai_chunk as simulate_convai_chunk
from ._convai import write_convai as write_convai
from ._convai import write_tiny_roberta as write_tiny_roberta
from ._peftml import OBJECTIVES as OBJECTIVES
from ._peftml import best_and_last as best_and_last
from ._peftml import finetune as finetune
from ._peftml import linear_names as linear_names
from ._peftml import retrain as retrain
from ._peftml import trainable_count as trainable_count
from ._realdata import CIFAR10_HELP as CIFAR10_HELP
from ._realdata import REALDATA_PRESETS as REALDATA_PRESETS
from ._realdata import MLPMixer as MLPMixer
from ._realdata import RealDataConfig as RealDataConfig
from ._realdata import crop_flip as crop_flip
from ._realdata import paired_differences as paired_differences
from ._realdata import read_cifar10 as read_cifar10
from ._realdata import realdata_summary as realdata_summary
from ._realdata import realdata_sweep as realdata_sweep
from ._realdata import simulate_realdata_chunk as simulate_realdata_chunk
from ._realdata import simulate_realdata_chunks as simulate_realdata_chunks
from ._realdata import write_cifar10 as write_cifar10
from ._reference import reference_trial as reference_trial
from ._run import EXECUTORS as EXECUTORS
from ._run import Pool as Pool
from ._run import run as run
from ._run import PACKS_PER_WORKER as PACKS_PER_WORKER
from ._run import run_many as run_many
from ._shallow import SHALLOW_SWEEPS as SHALLOW_SWEEPS
from ._shallow import ShallowConfig as ShallowConfig
from ._shallow import default_device as default_device
from ._shallow import shallow_sweep as shallow_sweep
from ._shallow import simulate_shallow_chunk as simulate_shallow_chunk
from ._store import ChunkStore as ChunkStore
from ._store import atomic_write as atomic_write
from ._store import folder_problem as folder_problem
from ._store import read_records as read_records
from ._store import read_store as read_store
from ._theory_checks import finetune_rate_table as finetune_rate_table
from ._theory_checks import retraining_samples_table as retraining_samples_table

__all__ = [
    "INT_FIELDS",
    "KNOBS",
    "VARIABLE",
    "BatchLoader",
    "CIFAR10_HELP",
    "CLARABEL_TOL",
    "FINETUNING_SCHEMES",
    "FineTuned",
    "LoraSpec",
    "MLPMixer",
    "OptimSpec",
    "REALDATA_PRESETS",
    "RETRAINING_METHODS",
    "RealDataConfig",
    "ReptileSpec",
    "Retrained",
    "attach_lora",
    "best_and_last",
    "crop_flip",
    "finetune",
    "linear_names",
    "paired_differences",
    "read_cifar10",
    "realdata_summary",
    "realdata_sweep",
    "retrain",
    "simulate_realdata_chunk",
    "simulate_realdata_chunks",
    "trainable_count",
    "write_cifar10",
    "CONVAI_HELP",
    "CONVAI_RANKS",
    "ConvAIConfig",
    "OBJECTIVES",
    "check_convai_inputs",
    "convai_summary",
    "persona_clusters",
    "persona_key",
    "read_persona_map",
    "read_personachat",
    "simulate_convai_chunk",
    "write_convai",
    "write_tiny_roberta",
    "JOINED_METHODS",
    "LinearConfig",
    "METHODS",
    "PRESETS",
    "RECOVERY_TOL",
    "RECOVERY_TOL_CONVEX",
    "SHALLOW_SWEEPS",
    "SWEEPS",
    "ShallowConfig",
    "convex_certificate_margin",
    "convex_recovery_table",
    "critical_spectra_table",
    "default_device",
    "descent_paths_table",
    "finetune_comparison",
    "finetune_rate_table",
    "finetune_summary",
    "init_comparison_table",
    "kappa_iterations_table",
    "linear_sweep",
    "linear_truth",
    "rate_prediction",
    "read_store",
    "recovery_phase_table",
    "reference_trial",
    "retraining_samples_table",
    "run",
    "run_many",
    "PACKS_PER_WORKER",
    "simulate_chunks",
    "EXECUTORS",
    "Pool",
    "read_records",
    "ChunkStore",
    "atomic_write",
    "folder_problem",
    "saddle_slice_table",
    "shallow_sweep",
    "simulate_chunk",
    "simulate_shallow_chunk",
    "solve_psd_relaxation",
    "two_parameter_table",
    "vanilla_alpha_table",
]
