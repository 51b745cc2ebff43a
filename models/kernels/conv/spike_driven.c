/* A 2-D convolution driven by its input's events, for channels_last (NHWC) float32 maps on a CPU.

   A conv fed by spikes sees mostly zeros (5-16% of the inputs of the zoo's danet-mnist, 2% in
   danet-nmnist), so instead of the dense product this adds, for every non-zero input value v at
   (h, w, c), v times the weight row W[kh, kw, c, :] to each output position the input reaches:
   the work follows the events, the synaptic operations the telemetry counts. A first pass finds
   the non-zero channels of each position, 64 at a time as the bits of a word (a vector compare),
   and counts them: past a density where the dense product is cheaper it stops, and the caller
   runs that instead. A silent position then costs nothing more.

   Each output value is its bias plus its contributions in the order of the input's positions and
   channels, then the kernel offsets: deterministic, and within float32 rounding of the dense
   product (a different order of the same sums). Compiled with -ffp-contract=off like the LIF loop.
*/

#include <stdint.h>

/* Which channels of each of the P positions of x: [P, C] are non-zero, as bits of 64-channel words:
   masks [P, ceil(C / 64)]. Returns how many there are. */
static int64_t event_masks(const float *restrict x, int64_t P, int64_t C, uint64_t *restrict masks)
{
    int64_t words = (C + 63) / 64;
    int64_t events = 0;
    for (int64_t p = 0; p < P; ++p) {
        const float *restrict position = x + p * C;
        for (int64_t g = 0; g < words; ++g) {
            int64_t c0 = g * 64;
            int64_t width = C - c0 < 64 ? C - c0 : 64;
            uint64_t fired = 0;
            for (int64_t i = 0; i < width; ++i) {
                fired |= (uint64_t)(position[c0 + i] != 0.0f) << i;
            }
            masks[p * words + g] = fired;
            events += __builtin_popcountll(fired);
        }
    }
    return events;
}

/* One image. x: [H, W, C]; masks: its event masks; w: [KH, KW, C, O]; bias: [O] or NULL;
   y: [HO, WO, O], written whole. */
static inline __attribute__((always_inline)) void spike_conv_image(
    const float *restrict x, const uint64_t *restrict masks, const float *restrict w,
    const float *restrict bias, float *restrict y, int64_t H, int64_t W, int64_t C, const int64_t O,
    const int64_t KH, const int64_t KW, const int64_t SH, const int64_t SW, int64_t PH, int64_t PW,
    int64_t HO, int64_t WO)
{
    int64_t words = (C + 63) / 64;
    for (int64_t q = 0; q < HO * WO; ++q) {
        float *restrict row = y + q * O;
        for (int64_t o = 0; o < O; ++o) {
            row[o] = bias ? bias[o] : 0.0f;
        }
    }
    for (int64_t h = 0; h < H; ++h) {
        for (int64_t u = 0; u < W; ++u) {
            const float *restrict position = x + (h * W + u) * C;
            for (int64_t g = 0; g < words; ++g) {
                int64_t c0 = g * 64;
                uint64_t fired = masks[(h * W + u) * words + g];
                while (fired) {
                    int64_t c = c0 + __builtin_ctzll(fired);
                    fired &= fired - 1;
                    float v = position[c];
                    for (int64_t kh = 0; kh < KH; ++kh) {
                        int64_t th = h + PH - kh; /* = ho * SH for the output row it reaches */
                        if (th < 0 || th % SH) {
                            continue;
                        }
                        int64_t ho = th / SH;
                        if (ho >= HO) {
                            continue;
                        }
                        for (int64_t kw = 0; kw < KW; ++kw) {
                            int64_t tw = u + PW - kw;
                            if (tw < 0 || tw % SW) {
                                continue;
                            }
                            int64_t wo = tw / SW;
                            if (wo >= WO) {
                                continue;
                            }
                            const float *restrict weights = w + ((kh * KW + kw) * C + c) * O;
                            float *restrict out = y + (ho * WO + wo) * O;
                            if (v == 1.0f) { /* a spike: an add, no multiply */
                                for (int64_t o = 0; o < O; ++o) {
                                    out[o] += weights[o];
                                }
                            } else {
                                for (int64_t o = 0; o < O; ++o) {
                                    out[o] += v * weights[o];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#define IMAGES(OO, K, S)                                                                             \
    for (int64_t n = 0; n < N; ++n) {                                                              \
        spike_conv_image(x + n * H * W * C, masks + n * H * W * words, w, bias,                    \
                         y + n * HO * WO * (OO), H, W, C, OO, K, K, S, S, PH, PW, HO, WO);         \
    }                                                                                              \
    return 0;

/* The common shapes get loops whose row length and kernel are compile-time constants (a row of
   O floats is then a few vector adds, the stride test a mask); any other runs the generic loop. */
#define WIDTH_CASE(OO)                                                                              \
    if (O == OO) {                                                                                 \
        if (KH == 3 && KW == 3 && SH == 1 && SW == 1) {                                            \
            IMAGES(OO, 3, 1)                                                                       \
        }                                                                                          \
        if (KH == 3 && KW == 3 && SH == 2 && SW == 2) {                                            \
            IMAGES(OO, 3, 2)                                                                       \
        }                                                                                          \
    }

/* x: [N, H, W, C]; w: [KH, KW, C, O]; bias: [O] or NULL; y: [N, HO, WO, O]. Zero padding PH, PW;
   HO, WO the caller's output size. masks: workspace of N * H * W * ceil(C / 64) words.
   Returns 0, or 1 without touching y when x holds more than max_events non-zero values (the
   dense product is then the cheaper one). */
int spikeserve_spike_conv2d_f32(const float *x, const float *w, const float *bias, float *y,
                                int64_t N, int64_t H, int64_t W, int64_t C, int64_t O, int64_t KH,
                                int64_t KW, int64_t SH, int64_t SW, int64_t PH, int64_t PW,
                                int64_t HO, int64_t WO, uint64_t *masks, int64_t max_events)
{
    const int64_t words = (C + 63) / 64;
    if (event_masks(x, N * H * W, C, masks) > max_events) {
        return 1;
    }
    WIDTH_CASE(16)
    WIDTH_CASE(32)
    WIDTH_CASE(64)
    WIDTH_CASE(128)
    WIDTH_CASE(256)
    WIDTH_CASE(512)
    for (int64_t n = 0; n < N; ++n) {
        spike_conv_image(x + n * H * W * C, masks + n * H * W * words, w, bias, y + n * HO * WO * O, H,
                         W, C, O, KH, KW, SH, SW, PH, PW, HO, WO);
    }
    return 0;
}
