# fairseq --user-dir plugin of an installed unifairseq (the path: `unifairseq-user-dir`): registers
# unifairseq's models, architectures, tasks, optimizer and the torch.load allow-list for fairseq
# checkpoints with fairseq, as the repository's user_dir/ does for a checkout.
import unifairseq.fairseq

unifairseq.fairseq.register()
