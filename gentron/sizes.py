"""GenTron model sizes, read like the paper's table, and their parameter counts.

What is counted: the transformer only, as trained: patch and timestep embedders, text projections,
blocks (self-attention, MLP, adaLN, cross-attention), final layer. Frozen text encoders and the VAE
are excluded; fixed sin-cos position tables are buffers, not parameters. Setting: 256px (32x32x4
latents, 256 tokens at /2), learn_sigma=True as DiT. `python -m gentron.sizes` prints every size.

Against the paper. DiT-XL/2 is 675,129,632 parameters; our adaLN XL/2 with CLIP-L is 674,567,456:
exactly DiT minus its class table (1001 x 1152) and its frozen pos_embed parameter (256 x 1152),
plus our pooled-text projection (768 x 1152 + 1152). With cross-attention and CLIP-L+T5-XXL we
count XL/2 = 910.7M (paper 930.0M, -2.1%) and G/2 = 3065.2M (paper 3083.8M, -0.6%). Nothing is tuned
to the paper. Each block's cross-attention reads its encoder's tokens at the encoder's own width
(K/V are Linear(768 or 4096 -> width), as Stable Diffusion's cross-attention does; interleaved, 14 of
XL/2's blocks read CLIP-L and 14 read T5-XXL); a width-to-width cross-attention behind one shared
token projection per encoder (PixArt's choice) would count 833.7M, 10% under the paper, which is why
we read the paper as the former. The remaining ~19M are not identified: the paper does not list its
embedders (a caption MLP or a second pooled projection would be about that size). G/2's MLP width is
itself uncertain (ViT-G uses 8192, which would add 245M).
