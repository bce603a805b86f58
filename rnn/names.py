"""Names that separate processes must agree on, each defined once: the environment variables
that the pool, the flows, the launcher and the library pass to each other, and the pool's
Prefect names (prefect.yaml names the work pool too)."""

# set by the pool for each worker (pool/__main__.py), read by the engines and the flows
THREADS_ENV = "RNN_THREADS"  # a worker's share of its machine's cores
MACHINE_ENV = "RNN_MACHINE"  # the machine's name in run records and checkpoint pushes
DVC_REMOTE_ENV = "RNN_DVC_REMOTE"  # the DVC remote's URL (stores/dvc_sync.py)
DVC_REMOTE_ENDPOINT_ENV = "RNN_DVC_REMOTE_ENDPOINT"  # its S3 endpoint, where not AWS
STACK_HOME_ENV = "RNN_STACK_HOME"  # where `python -m pool` keeps its state

# set by the data-parallel launcher for its ranks (rnn/dataparallel/)
LAUNCHER_ENV = "RNN_DP_LAUNCHER"  # the launcher's pid: it holds the workspace lock
TF_DEVICES_ENV = "RNN_TF_DEVICES"  # one TensorFlow process with this many replicas
WORKSPACE_HELD_ENV = "RNN_WORKSPACE_HELD"  # the lock file a parent (rnn repro) holds for us

# set by a sweep for the training of one of its trials (rnn/search/trial.py)
SWEEP_TRIAL_ENV = "RNN_SWEEP_TRIAL"  # the study and trial number, as JSON
SWEEP_STORAGE_ENV = "RNN_SWEEP_STORAGE"  # the study's storage: a journal file or a database URL

# switches for experiments and tests
TF_JIT_ENV = "RNN_TF_JIT"  # 1 / 0 forces XLA on / off for every TensorFlow variant
TORCH_FUSED_ENV = "RNN_TORCH_FUSED"  # 0: the PyTorch gated cells' loops without the C kernels
TORCH_ONEDNN_ENV = "RNN_TORCH_ONEDNN"  # 0: no oneDNN weight packing
KILL_ENV = "RNN_KILL_AT"  # a kill point to stop at (rnn/faults.py)

# the pool's Prefect names
PROMOTED_EVENT = "rnn.model.promoted"  # emitted by the retraining (flows/retrain.py), alerted on
WORK_POOL = "rnn-pool"
TRAINING_LIMIT = "rnn-training"  # the global concurrency limit: training slots of the pool
TRAINING_GPU_LIMIT = "rnn-training-gpu"  # the same for GPUs: one slot per GPU of the pool
TRAINING_QUEUE, TRAINING_GPU_QUEUE = "training", "training-gpu"  # CPU and GPU trainings
GPU_DEVICES = ("cuda", "gpu")  # the train.device values that want a GPU machine


def wants_gpu(device: str) -> bool:
    """A training whose ``train.device`` is one of these goes to the GPU queue and its slots."""
    return device in GPU_DEVICES
