"""Zero123++ (SUDO AI, 2023): our implementation of the multi-view diffusion stage on diffusers/transformers."""
