/* The gateway relay's packet path in C (loaded by ccmsec/aio/relay_core.py through cffi's ABI
 * mode, no Python headers needed): for each ready leg one recv, libsrtp unprotect, the header
 * checks and counters of MediaStream.receive_in_place, the echo's new header, libsrtp protect
 * and one sendto, with no interpreter in between. No cryptography here: libsrtp's own
 * srtp_protect / srtp_unprotect are passed in as function pointers (pylibsrtp's binding).
 *
 * What this file does not decide it hands back to Python: a leg not marked `fast` (any mode but
 * an answering echo with a known remote), and a decrypted packet whose header is not the plain
 * 12 bytes (CSRCs, extension, padding: Python normalises it, then calls relay_accept).
 *
 * The struct and prototypes between the RELAY_CDEF markers are also the cffi declarations
 * (relay_core.py reads them from this file), so the two cannot drift apart. */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>

/* RELAY_CDEF_BEGIN */
typedef int (*relay_srtp_fn)(void *ctx, void *packet, int *length);

struct relay_leg {
    /* MediaStream.counters, RelayEndpoint's counters */
    uint64_t sent, received, refused_authentication, refused_replay, malformed, foreign;
    uint64_t datagrams_in, octets_in, octets_out, send_errors;
    /* SequenceTracker (extended sequence numbers) */
    int64_t base, highest, tracked, out_of_order, restarts;
    void *rx;                  /* libsrtp session that decrypts, NULL: plain RTP */
    void *tx;                  /* libsrtp session that encrypts, NULL: plain RTP */
    int32_t fd;
    int32_t fast;              /* 1: relayed here; 0: the datagram is handed back to Python */
    int32_t rx_shortest;       /* a header and the tag */
    int32_t payload_type;
    int32_t ssrc_known;
    uint32_t remote_ssrc;
    /* Packetiser of the echo's packets */
    uint32_t ssrc, sequence, timestamp;
    int32_t first;
    uint32_t remote_length;
    uint8_t remote[28];        /* the far end's sockaddr */
};

struct relay_config {
    relay_srtp_fn protect, unprotect;
    const uint8_t *reason_by_status;   /* libsrtp status -> 0 authentication, 1 replay, 2 malformed */
    int32_t statuses;
    int32_t max_srtp_packet, max_rtp_packet;
};

struct relay_result {
    int32_t datagrams;         /* read this call */
    int32_t rounds;            /* epoll rounds done */
    int32_t handed_back;       /* entries in `back` */
    int32_t odd_fd;            /* >= 0: decrypted packet left in the buffer for Python */
    int32_t odd_length;
    int32_t full;              /* the last round filled max_events: more may be ready */
    int32_t back[512];         /* ready legs that are not fast */
};

int relay_drain(int epfd, struct relay_leg **legs, int32_t table_size, uint8_t *buffer,
                const struct relay_config *config, int32_t max_rounds, int32_t max_events,
                struct relay_result *result);
int relay_accept(struct relay_leg *leg, uint8_t *buffer, int32_t end, const struct relay_config *config);
/* RELAY_CDEF_END */

#define HEADER_SIZE 12
#define MAX_DROPOUT 3000
#define MAX_MISORDER 100
#define MAX_EVENTS 512

/* SequenceTracker.update, the same rules (RFC 3550 A.1, simplified) */
static void track(struct relay_leg *leg, uint32_t sequence)
{
    if (leg->highest < 0) {
        leg->base = leg->highest = sequence;
        leg->tracked = 1;
        return;
    }
    int64_t cycles = leg->highest & ~(int64_t)0xFFFF, last = leg->highest & 0xFFFF;
    int64_t delta = ((int64_t)sequence - last) & 0xFFFF;
    if (delta > 0 && delta < MAX_DROPOUT) {
        if ((int64_t)sequence < last)
            cycles += 0x10000;
        leg->highest = cycles | sequence;
    } else if (delta == 0 || delta > 0x10000 - MAX_MISORDER) {
        leg->out_of_order++;
    } else {
        leg->restarts++;
        leg->base = leg->highest = sequence;
        leg->tracked = 1;
        return;
    }
    leg->tracked++;
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}

/* A decrypted packet with the plain 12-byte header at buffer[0..end): the checks after
 * decryption (agreed payload type, one far-end SSRC), then the echo: new header in front of the
 * same payload, encrypt, send. Returns 1 when relayed or counted. */
int relay_accept(struct relay_leg *leg, uint8_t *buffer, int32_t end, const struct relay_config *config)
{
    uint32_t pt = buffer[1] & 0x7F;
    uint32_t sequence = (uint32_t)buffer[2] << 8 | buffer[3];
    uint32_t ssrc = get32(buffer + 8);
    if ((int32_t)pt != leg->payload_type || (leg->ssrc_known && ssrc != leg->remote_ssrc)) {
        leg->foreign++;
        return 1;
    }
    leg->ssrc_known = 1;
    leg->remote_ssrc = ssrc;
    track(leg, sequence);
    leg->received++;
    uint32_t payload = (uint32_t)(end - HEADER_SIZE);
    leg->octets_in += payload;
    /* the echo answers at once: MediaStream.send_in_place */
    leg->octets_out += payload;
    buffer[0] = 0x80;
    buffer[1] = (uint8_t)(leg->payload_type | (leg->first ? 0x80 : 0));
    buffer[2] = leg->sequence >> 8;
    buffer[3] = leg->sequence & 0xFF;
    put32(buffer + 4, leg->timestamp);
    put32(buffer + 8, leg->ssrc);
    leg->first = 0;
    leg->sequence = (leg->sequence + 1) & 0xFFFF;
    leg->timestamp += payload;
    leg->sent++;
    int length = end;
    if (leg->tx != NULL && config->protect(leg->tx, buffer, &length) != 0) {
        leg->send_errors++;     /* libsrtp would not encrypt (key exhausted): nothing is sent */
        return 1;
    }
    if (sendto(leg->fd, buffer, (size_t)length, MSG_DONTWAIT, (const struct sockaddr *)leg->remote,
               leg->remote_length) < 0)
        leg->send_errors++;     /* a full socket buffer or an ICMP error: dropped, as the network would */
    return 1;
}

int relay_drain(int epfd, struct relay_leg **legs, int32_t table_size, uint8_t *buffer,
                const struct relay_config *config, int32_t max_rounds, int32_t max_events,
                struct relay_result *result)
{
    struct epoll_event events[MAX_EVENTS];
    result->datagrams = result->rounds = result->handed_back = result->full = 0;
    result->odd_fd = -1;
    if (max_events > MAX_EVENTS)
        max_events = MAX_EVENTS;
    while (result->rounds < max_rounds) {
        int ready = epoll_wait(epfd, events, max_events, 0);
        if (ready < 0)
            return errno == EINTR ? 0 : -errno;
        result->rounds++;
        result->datagrams += ready;
        result->full = ready == max_events;
        for (int i = 0; i < ready; i++) {
            int fd = events[i].data.fd;
            struct relay_leg *leg = (fd >= 0 && fd < table_size) ? legs[fd] : NULL;
            if (leg == NULL || !leg->fast) {
                result->back[result->handed_back++] = fd;
                continue;
            }
            /* one byte more than the largest packet: a longer datagram is cut there and refused */
            ssize_t got = recv(fd, buffer, (size_t)config->max_srtp_packet + 1, MSG_DONTWAIT);
            if (got < 0)
                continue;           /* nothing after all, or an ICMP error queued on the socket */
            int length = (int)got;
            leg->datagrams_in++;
            if (leg->rx != NULL) {
                if (length < leg->rx_shortest || length > config->max_srtp_packet) {
                    leg->malformed++;
                    continue;
                }
                int status = config->unprotect(leg->rx, buffer, &length);
                if (status != 0) {
                    int reason = (status > 0 && status < config->statuses) ? config->reason_by_status[status] : 2;
                    if (reason == 0)
                        leg->refused_authentication++;
                    else if (reason == 1)
                        leg->refused_replay++;
                    else
                        leg->malformed++;
                    continue;
                }
            } else if (length > config->max_rtp_packet) {
                leg->malformed++;
                continue;
            }
            if (length < HEADER_SIZE || buffer[0] != 0x80) {
                /* not the plain header: Python parses it; the rest of this round waits for the
                 * next call (epoll is level-triggered, nothing is lost) */
                result->odd_fd = fd;
                result->odd_length = length;
                return 0;
            }
            relay_accept(leg, buffer, length, config);
        }
        if (result->handed_back > 0 || ready < max_events)
            break;    /* Python's legs first; what arrives meanwhile waits for the next tick */
    }
    return 0;
}
