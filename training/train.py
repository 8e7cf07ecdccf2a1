"""Train a hf_dynasr CTC Conformer: a supernet with nested sizes, or one size (optionally with DMAO).

Every option can sit in the YAML file and be overridden on the command line; --help lists them all.

    # one process (plain python works too)
    python training/train.py --config training/configs/smoke.yaml
    accelerate launch training/train.py --config training/configs/demo_cpu.yaml

    # several processes on one CPU machine (DDP over gloo); --num_processes makes the script check it
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \
        --mixed_precision no --dynamo_backend no training/train.py --config training/configs/demo_cpu.yaml \
        --num_processes 2

    # several GPUs on one machine, and several machines
    accelerate launch --num_processes 8 training/train.py --config training/configs/librispeech_960h.yaml
    accelerate launch --num_machines 2 --machine_rank 0 --main_process_ip HOST --main_process_port 29500 \
        --num_processes 16 training/train.py --config training/configs/librispeech_960h.yaml

    # resume after a stop or a kill
    python training/train.py --config ... --resume_from_checkpoint latest

The run itself is `hf_dynasr.trainer.main` (also installed as the `dynasr-train` command): options
(trainer/options.py), set-up (trainer/setup.py), the loop (trainer/loop.py), the final save (trainer/final.py).
"""

from hf_dynasr.trainer import main

if __name__ == "__main__":
    main()
