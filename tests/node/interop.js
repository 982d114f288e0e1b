#!/usr/bin/env node
/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * End-to-end interop check: Hyperledger Fabric's official Node.js client
 * libraries (fabric-common, fabric-protos), unchanged, against an ordering
 * node that serves orderer.AtomicBroadcast.
 *
 *   1. Broadcast: N signed MESSAGE envelopes. The identity, transaction ID,
 *      nonce, headers and signature all come from fabric-common (User,
 *      IdentityContext, Channel.buildChannelHeader, ServiceAction.buildHeader
 *      and sign). They are sent with fabric-common's own Committer
 *      (Client.newEndpoint + Committer.connect + Committer.sendBroadcast).
 *      Every response must be SUCCESS.
 *   2. Deliver: a DELIVER_SEEK_INFO envelope built and signed by
 *      fabric-common's EventService.build (start = specified 0, stop =
 *      specified Long.MAX_VALUE, BLOCK_UNTIL_READY). It goes out on
 *      fabric-protos' generated gRPC client
 *      (fabric-protos.services.orderer.AtomicBroadcast#deliver). The script
 *      follows the stream until every broadcast tx ID has been seen, then
 *      cancels it.
 *   3. Decode every block with fabric-common's BlockDecoder.decodeBlock and
 *      check: block numbers 0..B-1 with no gaps, block 0 is a CONFIG block,
 *      all N tx IDs are present (with our creator, and a signature that
 *      verifies), previous_hash == SHA-256(DER(previous header)), and
 *      data_hash == SHA-256(concatenation of the data entries).
 *   4. Print one JSON line on stdout:
 *      {"broadcast_ok":N,"blocks":B,"found":N,"chain_ok":true,"in_order":true}
 *      (in_order: the tx IDs appear in the ledger in broadcast order; each
 *      broadcast is acknowledged before the next is sent)
 *      and exit 0. On any failure, print the reason on stderr and exit 1.
 *      The exit status is 2 on a usage error.
 *
 * Usage:
 *   node interop.js --orderer 127.0.0.1:7050 --channel devchannel \
 *        --msp-dir DIR --mspid DevMSP --count N [--timeout-ms 30000] [--verbose]
 */

'use strict';

const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const util = require('util');

// fabric-common's default winston logger writes to stdout, which would corrupt
// the single JSON result line. Install our own logger (the SDK picks up
// global.hfc.logger when each module loads). It sends warnings and errors to
// stderr, and debug/info too with --verbose. It also records errors:
// BlockDecoder only logs some decode failures and does not throw them.
const VERBOSE = process.argv.includes('--verbose');
let loggedErrors = [];
global.hfc = global.hfc || {};
global.hfc.logger = {
	debug(...args) {
		if (VERBOSE) {
			process.stderr.write(`debug: ${util.format(...args)}\n`);
		}
	},
	info(...args) {
		if (VERBOSE) {
			process.stderr.write(`info: ${util.format(...args)}\n`);
		}
	},
	warn(...args) {
		process.stderr.write(`warn: ${util.format(...args)}\n`);
	},
	error(...args) {
		const msg = util.format(...args);
		loggedErrors.push(msg);
		process.stderr.write(`error: ${msg}\n`);
	},
};

const {BlockDecoder, Client, ServiceAction, User} = require('fabric-common');
const fabproto6 = require('fabric-protos');

const HeaderType = fabproto6.common.HeaderType;

// ---------------------------------------------------------------- arguments

function usage(msg) {
	if (msg) {
		process.stderr.write(`interop: ${msg}\n`);
	}
	process.stderr.write(`usage: node ${path.basename(__filename)} --orderer HOST:PORT --channel NAME ` +
		'--msp-dir DIR --mspid MSPID --count N [--timeout-ms MS] [--tls-ca FILE [--tls-client-cert FILE ' +
		'--tls-client-key FILE] [--tls-server-name NAME]] [--verbose]\n');
	process.exit(2);
}

function parseArgs(argv) {
	const opts = {timeoutMs: 30000};
	const keys = {
		'--orderer': 'orderer',
		'--channel': 'channel',
		'--msp-dir': 'mspDir',
		'--mspid': 'mspid',
		'--count': 'count',
		'--timeout-ms': 'timeoutMs',
		'--tls-ca': 'tlsCa',
		'--tls-client-cert': 'tlsClientCert',
		'--tls-client-key': 'tlsClientKey',
		'--tls-server-name': 'tlsServerName',
	};
	for (let i = 0; i < argv.length; i++) {
		const arg = argv[i];
		if (arg === '--verbose') {
			continue;
		}
		if (arg === '-h' || arg === '--help') {
			usage();
		}
		const key = keys[arg];
		if (!key || i + 1 >= argv.length) {
			usage(`bad argument: ${arg}`);
		}
		opts[key] = argv[++i];
	}
	for (const k of ['orderer', 'channel', 'mspDir', 'mspid', 'count']) {
		if (!opts[k]) {
			usage(`missing --${k.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase())}`);
		}
	}
	opts.count = Number(opts.count);
	opts.timeoutMs = Number(opts.timeoutMs);
	if (!Number.isInteger(opts.count) || opts.count < 1) {
		usage('--count must be a positive integer');
	}
	if (!Number.isInteger(opts.timeoutMs) || opts.timeoutMs < 1) {
		usage('--timeout-ms must be a positive integer');
	}
	// Accept "host:port" or "grpc://host:port"; with --tls-ca, grpcs.
	const scheme = opts.tlsCa ? 'grpcs' : 'grpc';
	opts.url = /^grpcs?:\/\//.test(opts.orderer) ? opts.orderer : `${scheme}://${opts.orderer}`;
	if (opts.tlsCa) {
		opts.tls = {
			ca: fs.readFileSync(opts.tlsCa),
			cert: opts.tlsClientCert ? fs.readFileSync(opts.tlsClientCert) : undefined,
			key: opts.tlsClientKey ? fs.readFileSync(opts.tlsClientKey) : undefined,
		};
	}
	return opts;
}

// ------------------------------------------------------------------ helpers

/** Load the MSP signing identity as a fabric-common User (signcerts/*.pem, keystore/*). */
function loadUser(mspDir, mspid) {
	const pick = (dir, filter) => {
		const full = path.join(mspDir, dir);
		const files = fs.readdirSync(full).filter(filter).sort();
		if (files.length === 0) {
			throw new Error(`no file in ${full}`);
		}
		return fs.readFileSync(path.join(full, files[0]), 'utf8');
	};
	const certPem = pick('signcerts', (f) => f.endsWith('.pem'));
	const keyDir = path.join(mspDir, 'keystore');
	const keyPem = fs.existsSync(path.join(keyDir, 'priv_sk')) ?
		fs.readFileSync(path.join(keyDir, 'priv_sk'), 'utf8') :
		pick('keystore', (f) => f.endsWith('_sk') || f.endsWith('.pem'));
	// Software CryptoSuite (ECDSA P-256, SHA-256, low-S DER signatures).
	const user = User.createUser('interop', '', mspid, certPem, keyPem);
	return {user, certPem};
}

/**
 * A MESSAGE (HeaderType 0) envelope, built the way fabric-common builds its own
 * envelopes (Commit, EventService): Channel.buildChannelHeader +
 * ServiceAction.buildHeader, then ServiceAction.sign(idContext) and
 * getSignedEnvelope().
 */
class MessageAction extends ServiceAction {
	constructor(name, channel) {
		super(name);
		this.type = 'Message';
		this.channel = channel;
		this._reset();
	}

	build(idContext, data) {
		const channelHeaderBuf = this.channel.buildChannelHeader(HeaderType.MESSAGE, '', idContext.transactionId);
		const payload = fabproto6.common.Payload.create({
			header: this.buildHeader(idContext, channelHeaderBuf),
			data,
		});
		this._payload = fabproto6.common.Payload.encode(payload).finish();
		return this._payload;
	}
}

/** uint64 as Long / number / string -> BigInt. */
function toBigInt(v) {
	if (v === undefined || v === null) {
		return 0n;
	}
	return BigInt(typeof v === 'object' ? v.toString(10) : String(v));
}

function derLength(n) {
	if (n < 0x80) {
		return Buffer.from([n]);
	}
	const bytes = [];
	for (let x = n; x > 0; x = Math.floor(x / 256)) {
		bytes.unshift(x & 0xff);
	}
	return Buffer.from([0x80 | bytes.length, ...bytes]);
}

function derTLV(tag, content) {
	return Buffer.concat([Buffer.from([tag]), derLength(content.length), content]);
}

/** DER INTEGER content of a non-negative BigInt: minimal two's complement, big-endian. */
function derUint(n) {
	let hex = n.toString(16);
	if (hex.length % 2) {
		hex = '0' + hex;
	}
	let bytes = Buffer.from(hex, 'hex');
	if (bytes[0] & 0x80) {
		bytes = Buffer.concat([Buffer.from([0]), bytes]);
	}
	return bytes;
}

/** Fabric's BlockHeader hash: SHA-256 of DER SEQUENCE{INTEGER number, OCTET STRING previous_hash, OCTET STRING data_hash}. */
function blockHeaderHash(header) {
	const der = derTLV(0x30, Buffer.concat([
		derTLV(0x02, derUint(toBigInt(header.number))),
		derTLV(0x04, Buffer.from(header.previous_hash || [])),
		derTLV(0x04, Buffer.from(header.data_hash || [])),
	]));
	return crypto.createHash('sha256').update(der).digest();
}

/** Fabric's BlockData hash: SHA-256 of the concatenated data entries (raw envelope bytes). */
function blockDataHash(data) {
	const h = crypto.createHash('sha256');
	for (const entry of (data && data.data) || []) {
		h.update(Buffer.from(entry));
	}
	return h.digest();
}

const hex = (b) => Buffer.from(b || []).toString('hex');

// ------------------------------------------------------------------- steps

/** Step 1: broadcast N MESSAGE envelopes with fabric-common's Committer. */
async function broadcastAll(opts, client, channel, idContext) {
	// fabric-common's TLS options: the CA (pem), the client certificate
	// (clientCert/clientKey, mutual TLS) and the name override.
	const endpointOpts = {url: opts.url, requestTimeout: opts.timeoutMs};
	if (opts.tls) {
		endpointOpts.pem = opts.tls.ca.toString();
		if (opts.tls.cert) {
			endpointOpts.clientCert = opts.tls.cert.toString();
			endpointOpts.clientKey = opts.tls.key.toString();
		}
		if (opts.tlsServerName) {
			endpointOpts['ssl-target-name-override'] = opts.tlsServerName;
		}
	}
	const endpoint = client.newEndpoint(endpointOpts);
	const committer = client.newCommitter('consenter-host', opts.mspid);
	await committer.connect(endpoint);
	const txIds = [];
	try {
		for (let i = 0; i < opts.count; i++) {
			const txContext = idContext.calculateTransactionId(); // fresh nonce + tx ID
			const action = new MessageAction(`message-${i}`, channel);
			action.build(txContext, Buffer.from(`fabric-common interop message ${i} ${txContext.transactionId}`));
			action.sign(txContext);
			const envelope = action.getSignedEnvelope();
			const response = await committer.sendBroadcast(envelope, opts.timeoutMs);
			if (!response || response.status !== 'SUCCESS') {
				throw new Error(`broadcast ${i} (tx ${txContext.transactionId}) returned ` +
					`status ${response && response.status} info ${JSON.stringify(response && response.info)}`);
			}
			txIds.push(txContext.transactionId);
		}
	} finally {
		committer.disconnect();
	}
	return txIds;
}

/**
 * Step 2: Deliver from block 0 with fabric-protos' AtomicBroadcast client until
 * every tx ID has been seen, then cancel the stream. Returns the raw block
 * objects, which the fabric-protos/grpc-js client has deserialized.
 */
function deliverUntil(opts, channel, idContext, txIds) {
	// The seek envelope is built and signed by fabric-common's EventService:
	// DELIVER_SEEK_INFO, SeekInfo{start: specified 0, stop: specified
	// Long.MAX_VALUE, behavior: BLOCK_UNTIL_READY}.
	const eventService = channel.newEventService('interop-deliver');
	eventService.build(idContext, {startBlock: 0, blockType: 'full'});
	eventService.sign(idContext);
	const seekEnvelope = eventService.getSignedEnvelope();

	const addr = opts.url.replace(/^grpcs?:\/\//, '');
	const AtomicBroadcast = fabproto6.services.orderer.AtomicBroadcast;
	const grpc = require('fabric-protos/grpc');
	const credentials = opts.tls ?
		grpc.credentials.createSsl(opts.tls.ca, opts.tls.key || null, opts.tls.cert || null) :
		grpc.credentials.createInsecure();
	const grpcOpts = {'grpc.max_receive_message_length': -1, 'grpc.max_send_message_length': -1};
	if (opts.tlsServerName) {
		grpcOpts['grpc.ssl_target_name_override'] = opts.tlsServerName;
		grpcOpts['grpc.default_authority'] = opts.tlsServerName;
	}
	const service = new AtomicBroadcast(addr, credentials, grpcOpts);

	const pending = new Set(txIds);
	const blocks = [];
	return new Promise((resolve, reject) => {
		let done = false;
		const stream = service.deliver();
		const finish = (err) => {
			if (done) {
				return;
			}
			done = true;
			clearTimeout(timer);
			stream.cancel();
			service.close();
			if (err) {
				reject(err);
			} else {
				resolve(blocks);
			}
		};
		const timer = setTimeout(() => finish(new Error(`deliver: timed out after ${opts.timeoutMs} ms with ` +
			`${blocks.length} blocks received and ${pending.size} of ${txIds.length} tx IDs not yet seen`)), opts.timeoutMs);

		stream.on('data', (response) => {
			if (done) {
				return;
			}
			if (response.Type === 'block' || response.block) {
				const block = response.block;
				blocks.push(block);
				for (const envBytes of block.data.data) {
					const payload = fabproto6.common.Payload.decode(fabproto6.common.Envelope.decode(envBytes).payload);
					const ch = fabproto6.common.ChannelHeader.decode(payload.header.channel_header);
					pending.delete(ch.tx_id);
				}
				if (pending.size === 0) {
					finish();
				}
			} else {
				const status = typeof response.status === 'number' ? fabproto6.common.Status[response.status] : response.status;
				finish(new Error(`deliver: stream ended with status ${status} after ${blocks.length} blocks ` +
					`and with ${pending.size} of ${txIds.length} tx IDs not yet seen`));
			}
		});
		stream.on('error', (err) => finish(new Error(`deliver: ${err.message || err}`)));
		stream.on('end', () => finish(new Error(`deliver: stream ended after ${blocks.length} blocks ` +
			`and with ${pending.size} of ${txIds.length} tx IDs not yet seen`)));

		stream.write(seekEnvelope);
	});
}

/** Step 3: decode with BlockDecoder and check the tx IDs and the hash chain. */
function verify(opts, certPem, txIds, rawBlocks) {
	const wanted = new Set(txIds);
	const found = new Set();
	const order = []; // our tx IDs in ledger order
	let prevHeader = null;
	rawBlocks.forEach((raw, i) => {
		const number = toBigInt(raw.header.number);
		if (number !== BigInt(i)) {
			throw new Error(`block ${i}: header.number is ${number}, expected ${i}`);
		}

		loggedErrors = [];
		const block = BlockDecoder.decodeBlock(raw);
		if (loggedErrors.length > 0) {
			throw new Error(`block ${i}: BlockDecoder reported errors: ${loggedErrors.join(' | ')}`);
		}
		if (toBigInt(block.header.number) !== number) {
			throw new Error(`block ${i}: BlockDecoder number ${block.header.number} != ${number}`);
		}

		// data_hash over the raw envelope bytes.
		const dataHash = blockDataHash(raw.data);
		if (!dataHash.equals(Buffer.from(raw.header.data_hash || []))) {
			throw new Error(`block ${i}: data_hash ${hex(raw.header.data_hash)} != SHA-256(data) ${hex(dataHash)}`);
		}
		// previous_hash == hash of the previous header (DER).
		if (prevHeader) {
			const expected = blockHeaderHash(prevHeader);
			if (!expected.equals(Buffer.from(raw.header.previous_hash || []))) {
				throw new Error(`block ${i}: previous_hash ${hex(raw.header.previous_hash)} != ` +
					`SHA-256(DER(header ${i - 1})) ${hex(expected)}`);
			}
		}
		prevHeader = raw.header;

		const envelopes = block.data.data;
		if (envelopes.length !== raw.data.data.length) {
			throw new Error(`block ${i}: BlockDecoder gave ${envelopes.length} envelopes, raw block has ${raw.data.data.length}`);
		}
		if (i === 0) {
			const types = envelopes.map((e) => e.payload.header.channel_header.typeString);
			if (types.length !== 1 || types[0] !== 'CONFIG') {
				throw new Error(`block 0 is not a genesis config block (envelope types ${JSON.stringify(types)})`);
			}
		}
		envelopes.forEach((env, j) => {
			const ch = env.payload.header.channel_header;
			if (ch.channel_id !== opts.channel) {
				throw new Error(`block ${i} envelope ${j}: channel_id ${JSON.stringify(ch.channel_id)}, expected ${opts.channel}`);
			}
			if (!wanted.has(ch.tx_id)) {
				return;
			}
			if (found.has(ch.tx_id)) {
				throw new Error(`block ${i} envelope ${j}: tx ID ${ch.tx_id} appears twice`);
			}
			if (ch.typeString !== 'MESSAGE') {
				throw new Error(`block ${i} envelope ${j}: tx ${ch.tx_id} has type ${ch.typeString}, expected MESSAGE`);
			}
			const creator = env.payload.header.signature_header.creator;
			if (creator.mspid !== opts.mspid || !Buffer.from(creator.id_bytes || []).equals(Buffer.from(certPem))) {
				throw new Error(`block ${i} envelope ${j}: tx ${ch.tx_id} creator is not ${opts.mspid}/our certificate`);
			}
			// The block must carry the envelope exactly as signed: check
			// fabric-common's signature over the raw payload bytes.
			const envProto = fabproto6.common.Envelope.decode(raw.data.data[j]);
			if (!crypto.verify('sha256', envProto.payload, certPem, envProto.signature)) {
				throw new Error(`block ${i} envelope ${j}: tx ${ch.tx_id} signature does not verify`);
			}
			found.add(ch.tx_id);
			order.push(ch.tx_id);
		});
	});
	if (found.size !== wanted.size) {
		const missing = txIds.filter((t) => !found.has(t));
		throw new Error(`${missing.length} tx IDs not found in the blocks, e.g. ${missing[0]}`);
	}
	// Each broadcast was acknowledged before the next was sent, so the
	// ledger must hold them in broadcast order.
	const inOrder = order.length === txIds.length && order.every((t, k) => t === txIds[k]);
	return {found: found.size, inOrder};
}

async function main() {
	const opts = parseArgs(process.argv.slice(2));
	const {user, certPem} = loadUser(opts.mspDir, opts.mspid);
	const client = new Client('interop');
	if (opts.tls && opts.tls.cert) {
		// Mutual TLS: fabric-common then binds its Deliver requests to the
		// client certificate (the channel header's tls_cert_hash), as an
		// orderer with ClientAuthRequired checks.
		client.setTlsClientCertAndKey(opts.tls.cert.toString(), opts.tls.key.toString());
	}
	const channel = client.newChannel(opts.channel);
	const idContext = client.newIdentityContext(user);

	const txIds = await broadcastAll(opts, client, channel, idContext);
	const blocks = await deliverUntil(opts, channel, idContext, txIds);
	const {found, inOrder} = verify(opts, certPem, txIds, blocks);

	process.stdout.write(JSON.stringify({
		broadcast_ok: txIds.length,
		blocks: blocks.length,
		found,
		chain_ok: true,
		in_order: inOrder,
	}) + '\n');
}

main().then(
	() => process.exit(0),
	(err) => {
		process.stderr.write(`interop: FAILED: ${err && err.stack ? err.stack : err}\n`);
		process.exit(1);
	});
