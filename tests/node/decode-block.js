#!/usr/bin/env node
/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * Decode raw marshalled `common.Block` protobuf files with Hyperledger Fabric's
 * official Node.js libraries (fabric-common's BlockDecoder, cross-checked with
 * fabric-protos) and print one JSON summary line per block on stdout.
 *
 * Usage: node decode-block.js <block-file>...
 *
 * Exit status: 0 if every file decoded, 1 if any file failed (reason on
 * stderr; the remaining files are still processed), 2 on usage error.
 */

'use strict';

const fs = require('fs');
const path = require('path');
const util = require('util');

// fabric-common's default winston logger writes info/warn to stdout, which
// would corrupt the JSON-lines output. Install our own logger (the SDK picks
// up global.hfc.logger) that sends everything to stderr, and that records
// errors: BlockDecoder swallows some decode failures (identities, endorser
// transactions) and only logs them, so a logged error counts as a failure.
let loggedErrors = [];
global.hfc = global.hfc || {};
global.hfc.logger = {
	debug() {},
	info() {},
	warn(...args) {
		process.stderr.write(`warn: ${util.format(...args)}\n`);
	},
	error(...args) {
		loggedErrors.push(util.format(...args));
	},
};

const {BlockDecoder} = require('fabric-common');
const fabproto6 = require('fabric-protos');

const SIGNATURES = fabproto6.common.BlockMetadataIndex.SIGNATURES; // 0
const LAST_CONFIG = fabproto6.common.BlockMetadataIndex.LAST_CONFIG; // 1

/** uint64 as Long / number / string / bigint -> decimal string. */
function toDecimal(value) {
	if (value === undefined || value === null) {
		return null;
	}
	if (typeof value === 'object' && typeof value.toString === 'function') {
		return value.toString(10); // Long (unsigned for uint64 fields)
	}
	return String(value);
}

/** bytes as Buffer / Uint8Array -> lowercase hex ('' when absent). */
function toHex(bytes) {
	if (!bytes) {
		return '';
	}
	return Buffer.from(bytes).toString('hex');
}

/** Decimal string of the last config index, or null if the block carries none. */
function lastConfigIndex(decoded, rawBlock) {
	// Fabric >= 1.4.2/2.x: SIGNATURES slot value is an OrdererBlockMetadata.
	// BlockDecoder exposes that value only as raw bytes, so decode it with fabric-protos.
	const sigSlot = decoded.metadata.metadata[SIGNATURES];
	if (sigSlot && sigSlot.value && sigSlot.value.length > 0) {
		const obm = fabproto6.common.OrdererBlockMetadata.decode(sigSlot.value);
		if (obm.last_config) {
			return toDecimal(obm.last_config.index);
		}
	}
	// Older layout: LAST_CONFIG slot holds Metadata{value: LastConfig}.
	// BlockDecoder returns {} for this slot, so decode the raw slot.
	const raw = rawBlock.metadata && rawBlock.metadata.metadata[LAST_CONFIG];
	if (raw && raw.length > 0) {
		const md = fabproto6.common.Metadata.decode(raw);
		if (md.value && md.value.length > 0) {
			return toDecimal(fabproto6.common.LastConfig.decode(md.value).index);
		}
	}
	return null;
}

function summarize(file) {
	const buf = fs.readFileSync(file);
	if (buf.length === 0) {
		throw new Error('file is empty');
	}

	loggedErrors = [];
	const block = BlockDecoder.decode(buf);
	if (loggedErrors.length > 0) {
		throw new Error(`BlockDecoder reported errors: ${loggedErrors.join(' | ')}`);
	}

	// Cross-check against a plain fabric-protos decode.
	const raw = fabproto6.common.Block.decode(buf);
	if (!raw.header || !raw.data) {
		throw new Error('block has no header or no data');
	}
	const checks = [
		['number', toDecimal(block.header.number), toDecimal(raw.header.number)],
		['previous_hash', toHex(block.header.previous_hash), toHex(raw.header.previous_hash)],
		['data_hash', toHex(block.header.data_hash), toHex(raw.header.data_hash)],
		['envelopes', block.data.data.length, raw.data.data.length],
	];
	for (const [name, a, b] of checks) {
		if (a !== b) {
			throw new Error(`BlockDecoder and fabric-protos disagree on ${name}: ${a} vs ${b}`);
		}
	}

	const envelopes = block.data.data;
	const channelHeaders = envelopes.map((env) => env.payload.header.channel_header);
	const sigSlot = block.metadata.metadata[SIGNATURES] || {signatures: []};

	return {
		file,
		number: toDecimal(block.header.number),
		previous_hash: toHex(block.header.previous_hash),
		data_hash: toHex(block.header.data_hash),
		envelopes: envelopes.length,
		channel_ids: channelHeaders.map((ch) => ch.channel_id),
		tx_ids: channelHeaders.map((ch) => ch.tx_id),
		header_types: channelHeaders.map((ch) => ch.type),
		signature_creators: (sigSlot.signatures || []).map((s) => s.signature_header.creator.mspid),
		last_config_index: lastConfigIndex(block, raw),
		metadata_slots: raw.metadata ? raw.metadata.metadata.length : 0,
	};
}

function main(argv) {
	const files = argv.slice(2);
	if (files.length === 0 || files.includes('-h') || files.includes('--help')) {
		process.stderr.write(`usage: node ${path.basename(__filename)} <block-file>...\n`);
		return 2;
	}
	let failed = 0;
	for (const file of files) {
		try {
			process.stdout.write(JSON.stringify(summarize(file)) + '\n');
		} catch (err) {
			failed++;
			process.stderr.write(`decode-block: ${file}: ${err && err.message ? err.message : err}\n`);
		}
	}
	return failed > 0 ? 1 : 0;
}

process.exitCode = main(process.argv);
