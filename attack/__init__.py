"""Reference diffusion model and extraction attacks (Carlini et al. 2023); see ../shared/docs/attack.md."""
