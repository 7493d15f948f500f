# fairseq --user-dir shim: registers unifairseq's models, architectures, tasks, optimizer and the
# torch.load allow-list for fairseq checkpoints with fairseq.
import unifairseq.fairseq

unifairseq.fairseq.register()
