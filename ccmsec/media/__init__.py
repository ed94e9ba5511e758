"""Media plane: RTP (RFC 3550) and SRTP (RFC 3711, through libsrtp) for G.711 audio.

Sans-IO modules, one concept each: `rtp` (packet codec), `g711` (µ-law / A-law), `packetiser`
(20 ms framing, sequence numbers, timestamps, SSRC; receive-side loss accounting), `tones`
(tones, announcements, music on hold), `srtp` (libsrtp contexts and refusal reasons), `stream`
(one media stream: packetiser + optional SRTP + counters). The asyncio UDP adapter is
`ccmsec.aio.media`.
"""
