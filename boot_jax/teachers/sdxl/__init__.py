"""The Stable Diffusion XL teacher family: folder loading (`loading`) and
the teacher (`sdxl_teacher`). It shares the UNet, VAE and CLIP ports, the
export and the PyTorch one-step function with the `sd` family; what is
its own is the second text encoder, the pooled text embedding and the
micro-conditioning.
"""
