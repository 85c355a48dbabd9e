"""Overview: what FALCON is, a picture of the EHP, and where to go next."""
import streamlit as st

import common

st.title("FALCON Explorer")
st.markdown(
    "**FALCON** compresses a convolutional network by replacing each standard D×D convolution "
    "(M→N channels) with a **pointwise** 1×1 convolution M→N followed by a **depthwise** D×D convolution on "
    "the N output channels. The two small kernels are fitted to the trained one through the "
    "**extended Hadamard product** (EHP); rank-k FALCON sums k such pairs. Running the two convolutions "
    "gives exactly the standard convolution with the EHP kernel (Theorems 1 and 2 of the thesis), so "
    "a trained layer can be converted by fitting its kernel, then fine-tuned. "
    "MobileNet's depthwise separable conv (DSConv) is the same product along the *input* channel."
)
# side by side, one under the other in a narrow window (never cut off: each keeps its whole width)
formulas = st.container(horizontal=True, gap="large", key="ov_formulas")
formulas.latex(r"\text{FALCON:}\quad K_{n,m,i,j} = \sum_{r=1}^{k} P^{(r)}_{n,m}\, D^{(r)}_{n,i,j}", width="content")
formulas.latex(r"\text{DSConv:}\quad K_{n,m,i,j} = \sum_{r=1}^{k} P^{(r)}_{n,m}\, D^{(r)}_{m,i,j}", width="content")

st.subheader("The EHP, drawn")
controls = st.columns([1, 1, 1, 3])
m = common.widget(controls[0].slider, "input channels M", 2, 8, 4, key="ov_M")
n = common.widget(controls[1].slider, "output channels N", 2, 8, 3, key="ov_N")
seed = common.number(controls[2], "random example", "seed", 0, step=1, key="ov_seed",
                     help="seed of the random pointwise and depthwise factors")
controls[3].caption(
    "Random rank-1 factors for a 3×3 layer, multiplied out by the library's EHP product (`falcon.ehp_numpy`, "
    "tested against the `ehp_kernel` that the fits use). "
    "Colour: one diverging scale for every panel (red > 0 > blue). In FALCON every row of K (one output "
    "channel) is the same depthwise kernel scaled by a row of P; in DSConv every column (one input channel) is."
)


@st.cache_data(show_spinner=False)
def example(m: int, n: int, seed: int) -> tuple[dict, dict]:
    import numpy as np

    from falcon.ehp_numpy import ehp_kernel_np  # numpy: this first page draws before torch is imported

    rng = np.random.default_rng(seed)
    p = rng.standard_normal((n, m), dtype=np.float32)
    d_out, d_in = rng.standard_normal((n, 3, 3), dtype=np.float32), rng.standard_normal((m, 3, 3), dtype=np.float32)
    falcon = {"P": p, "D": d_out, "K": ehp_kernel_np(p, d_out, "output")}
    dsconv = {"P": p, "D": d_in, "K": ehp_kernel_np(p, d_in, "input")}
    return falcon, dsconv


with common.guard():
    from falcon.views.figures import ehp_figure

    falcon_parts, dsconv_parts = example(int(m), int(n), int(seed))
    common.plot(ehp_figure(falcon_parts, dsconv_parts), key="ehp", filename="ehp-factorization")

st.subheader("Where to go next")
cols = st.columns(2)
for i, p in enumerate(common.PAGES[1:]):
    with cols[i % 2].container(border=True):
        st.page_link(p.path, label=p.title, icon=p.icon)
        st.caption(p.summary)
