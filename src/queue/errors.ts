/**
 * Typed queue errors. Each carries the SMTP reply (for ingress) and HTTP status (for admin)
 * it maps to, so no caller has to guess.
 */
export class QueueError extends Error {
  constructor(
    message: string,
    readonly smtpCode: number,
    readonly enhancedCode: string,
    readonly httpStatus: number,
  ) {
    super(message);
    this.name = new.target.name;
  }
}

/** Storage cannot take more (disk full, quota). SMTP 452 4.3.1. */
export class SpoolFullError extends QueueError {
  constructor(message = 'Insufficient system storage', override readonly cause?: unknown) {
    super(message, 452, '4.3.1', 507);
  }
}

/** Storage or broker failed (I/O error, Kafka down). SMTP 451 4.3.0. */
export class QueueUnavailableError extends QueueError {
  constructor(message = 'Queue temporarily unavailable', override readonly cause?: unknown) {
    super(message, 451, '4.3.0', 503);
  }
}

export class MailNotFoundError extends QueueError {
  constructor(readonly id: string) {
    super(`No mail with id ${id}`, 550, '5.1.0', 404);
  }
}

/** The action does not apply in the mail's state (e.g. release a mail that is not held). */
export class InvalidTransitionError extends QueueError {
  constructor(readonly id: string, readonly state: string, readonly action: string) {
    super(`Cannot ${action} mail ${id}: it is ${state}`, 550, '5.0.0', 409);
  }
}

/**
 * Hold or remove while an attempt's final "." is in flight (commitDelivery): the remote may
 * already have the mail, so the action could not keep its promise. 409; try again once the
 * attempt is recorded (milliseconds to the data timeout).
 */
export class MailInFlightError extends QueueError {
  constructor(readonly id: string, readonly action: string) {
    super(`Cannot ${action} mail ${id}: it is being handed to the remote server right now (final "." sent); try again once the attempt is recorded`, 451, '4.3.0', 409);
  }
}

/** An action on recipients of a mail names one it does not have (404) or one already done (409). */
export class RecipientNotPendingError extends QueueError {
  constructor(readonly id: string, readonly address: string, readonly done: boolean) {
    super(done ? `Recipient ${address} of mail ${id} is already done` : `Mail ${id} has no recipient ${address}`, 550, '5.1.1', done ? 409 : 404);
  }
}

/** A redirect names an address the mail already has as a recipient (409). */
export class RecipientExistsError extends QueueError {
  constructor(readonly id: string, readonly address: string) {
    super(`Mail ${id} already has the recipient ${address}`, 550, '5.1.1', 409);
  }
}

/** The worker's lease is gone: expired, taken by another, or the mail was removed or held. */
export class LeaseLostError extends QueueError {
  constructor(readonly id: string) {
    super(`Lease on mail ${id} is no longer held`, 451, '4.3.0', 409);
  }
}

/** Maps a Node.js file-system error to the queue error an SMTP client should see. */
export function storageError(err: unknown): QueueError {
  if (err instanceof QueueError) return err;
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  if (code === 'ENOSPC' || code === 'EDQUOT' || code === 'EFBIG' || code === 'MDB_MAP_FULL') {
    return new SpoolFullError('Insufficient system storage', err);
  }
  return new QueueUnavailableError(`Queue storage error${code ? ` (${code})` : ''}`, err);
}
