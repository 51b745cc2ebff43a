/* The LIF loop of reference.py in plain C, for inference on float32 CPU tensors (the native backend).

   One pass: each sample's membrane row stays in cache while the T steps run over it, and the
   spikes are counted as they fire (per sample, and per position summed over channels and steps
   for the exact synaptic-operation count of the conv they feed), where the eager loop makes
   about ten passes per step and a count afterwards is a pass of its own.

   Every value equals the reference's bit for bit: the same float32 operations in the same order,
   compiled with -ffp-contract=off (a fused multiply-add would round once where torch rounds twice).
   The flags are compile-time constants of each specialised loop, so the compiler vectorises it.
*/

#include <stdint.h>
#include <string.h>

/* Neurons per tile: the tile's membranes stay in L1 while the T steps run over them, so a wide
   layer streams its input and output once instead of re-reading its membrane row at every step. */
#define TILE 2048

/* Per-position counts: none, or summed over the channels of a [C, H*W] sample (channels outer,
   torch's default layout) or of a [H*W, C] one (channels inner: a channels_last network's). */
enum { NO_POSITIONS = 0, CHANNELS_OUTER = 1, CHANNELS_INNER = 2 };

/* The T steps over ``length`` contiguous neurons of sample b from ``first``; acc (by position only)
   adds up each neuron's spikes. Returns the spikes fired (counted only without positions). */
static inline __attribute__((always_inline)) int64_t lif_tile(
    const float *restrict x, float *restrict out, float *restrict v, float *restrict acc,
    int64_t steps, int64_t batch, int64_t b, int64_t features, int64_t first, int64_t length,
    float inv_tau, float v_threshold, float rest, float v_reset, const int hard_reset,
    const int decay_input, const int analog_output, const int by_position)
{
    int64_t fired = 0;
    if (by_position) {
        memset(acc, 0, (size_t)length * sizeof(float));
    }
    for (int64_t t = 0; t < steps; ++t) {
        const float *restrict xt = x + (t * batch + b) * features + first;
        float *restrict ot = out + (t * batch + b) * features + first;
        float *restrict vt = v + first;
        for (int64_t i = 0; i < length; ++i) {
            float vf = vt[i];
            float h;
            if (decay_input) {
                h = vf + (xt[i] - (vf - rest)) * inv_tau;
            } else {
                h = (vf - (vf - rest) * inv_tau) + xt[i];
            }
            int spike = h >= v_threshold;
            float s = spike ? 1.0f : 0.0f;
            if (hard_reset) {
                vt[i] = h * (1.0f - s) + v_reset * s;
            } else {
                vt[i] = h - v_threshold * s;
            }
            if (!by_position) {
                fired += spike;
            }
            if (analog_output) {
                ot[i] = h > 0.0f ? h : 0.0f;
            } else {
                ot[i] = s;
                if (by_position) {
                    acc[i] += s;
                }
            }
        }
    }
    return fired;
}

static inline __attribute__((always_inline)) void lif_rows(
    const float *restrict x, float *restrict out, float *restrict v, int64_t *restrict count,
    float *restrict per_position, int64_t steps, int64_t batch, int64_t b, int64_t features,
    int64_t positions, float inv_tau, float v_threshold, float rest, float v_reset,
    const int hard_reset, const int decay_input, const int analog_output, const int by_position)
{
    float acc[TILE]; /* each neuron's spikes over the steps, folded into positions once per tile */
    int64_t fired = 0;
    int64_t channels = features / positions;
    if (by_position == CHANNELS_INNER) {
        /* a position's channels are adjacent: any run of neurons is a tile, folded position by position */
        for (int64_t first = 0; first < features; first += TILE) {
            int64_t length = features - first < TILE ? features - first : TILE;
            lif_tile(x, out, v, acc, steps, batch, b, features, first, length, inv_tau, v_threshold,
                     rest, v_reset, hard_reset, decay_input, analog_output, by_position);
            for (int64_t f = first; f < first + length;) {
                int64_t p = f / channels;
                int64_t end = (p + 1) * channels < first + length ? (p + 1) * channels : first + length;
                float sum = 0.0f; /* whole numbers up to T * C: exact */
                for (int64_t i = f; i < end; ++i) {
                    sum += acc[i - first];
                }
                per_position[p] += sum;
                f = end;
            }
        }
    } else {
        /* a tile is whole channel planes of small maps, or a run of positions of one large plane:
           its neurons are contiguous, so the step loop is one long vectorised loop */
        int64_t tile_channels = positions >= TILE ? 1 : TILE / positions;
        int64_t tile_positions = positions >= TILE ? TILE : positions;
        for (int64_t c0 = 0; c0 < channels; c0 += tile_channels) {
            int64_t c1 = c0 + tile_channels < channels ? c0 + tile_channels : channels;
            for (int64_t p0 = 0; p0 < positions; p0 += tile_positions) {
                int64_t p1 = p0 + tile_positions < positions ? p0 + tile_positions : positions;
                /* whole planes (p0 = 0, p1 = P) or part of one plane (c1 = c0 + 1): contiguous */
                int64_t first = c0 * positions + p0;
                int64_t length = (c1 - c0 - 1) * positions + (p1 - p0);
                fired += lif_tile(x, out, v, acc, steps, batch, b, features, first, length, inv_tau,
                                  v_threshold, rest, v_reset, hard_reset, decay_input, analog_output,
                                  by_position);
                if (by_position) {
                    for (int64_t c = c0; c < c1; ++c) {
                        const float *restrict plane = acc + (c - c0) * positions;
                        for (int64_t p = p0; p < p1; ++p) {
                            per_position[p] += plane[p - p0];
                        }
                    }
                }
            }
        }
    }
    if (count) {
        if (by_position) { /* the sample's spikes, from its per-position counts (exact integers) */
            for (int64_t p = 0; p < positions; ++p) {
                fired += (int64_t)per_position[p];
            }
        }
        count[b] = fired;
    }
}

#define LIF_CASE(HARD, DECAY, ANALOG, BY_POSITION)                                                  \
    if (hard_reset == HARD && decay_input == DECAY && analog_output == ANALOG &&                    \
        mode == BY_POSITION) {                                                                      \
        for (int64_t b = 0; b < batch; ++b) {                                                      \
            float *v = v_work + b * features;                                                      \
            if (v_init) {                                                                          \
                memcpy(v, v_init + b * features, (size_t)features * sizeof(float));                \
            } else {                                                                               \
                for (int64_t f = 0; f < features; ++f) v[f] = rest;                                 \
            }                                                                                      \
            if (BY_POSITION) {                                                                     \
                memset(per_position + b * positions, 0, (size_t)positions * sizeof(float));        \
            }                                                                                      \
            lif_rows(x, out, v, count, BY_POSITION ? per_position + b * positions : 0, steps,       \
                     batch, b, features, positions, inv_tau, v_threshold, rest, v_reset, HARD,      \
                     DECAY, ANALOG, BY_POSITION);                                                  \
        }                                                                                          \
        return 0;                                                                                  \
    }

/* x, out: [T, B, F]; v_init: [B, F] or NULL; v_work: [B, F], the final membrane on return;
   count: [B] or NULL; per_position: [B, P] (written whole) or NULL (P divides F; spiking outputs only),
   F read as [P, C] where channels_inner, else as [C, P].
   Returns 0, or -1 for a combination it has no loop for. */
int spikeserve_lif_forward_f32(const float *x, float *out, const float *v_init, float *v_work,
                               int64_t *count, float *per_position, int64_t steps, int64_t batch,
                               int64_t features, int64_t positions, float inv_tau,
                               float v_threshold, float rest, float v_reset, int hard_reset,
                               int decay_input, int analog_output, int channels_inner)
{
    if (positions <= 0 || features % positions != 0) {
        return -1;
    }
    const int mode = per_position == 0 ? NO_POSITIONS : channels_inner ? CHANNELS_INNER : CHANNELS_OUTER;
    LIF_CASE(1, 1, 0, NO_POSITIONS)
    LIF_CASE(1, 1, 0, CHANNELS_OUTER)
    LIF_CASE(1, 1, 0, CHANNELS_INNER)
    LIF_CASE(1, 1, 1, NO_POSITIONS)
    LIF_CASE(1, 0, 0, NO_POSITIONS)
    LIF_CASE(1, 0, 0, CHANNELS_OUTER)
    LIF_CASE(1, 0, 0, CHANNELS_INNER)
    LIF_CASE(1, 0, 1, NO_POSITIONS)
    LIF_CASE(0, 1, 0, NO_POSITIONS)
    LIF_CASE(0, 1, 0, CHANNELS_OUTER)
    LIF_CASE(0, 1, 0, CHANNELS_INNER)
    LIF_CASE(0, 1, 1, NO_POSITIONS)
    LIF_CASE(0, 0, 0, NO_POSITIONS)
    LIF_CASE(0, 0, 0, CHANNELS_OUTER)
    LIF_CASE(0, 0, 0, CHANNELS_INNER)
    LIF_CASE(0, 0, 1, NO_POSITIONS)
    return -1;
}
