# Copyright (c) 2026, the asyncjobs authors
#
# Two things the background workers do on their own, with nobody calling:
# - a recurring job fires again: when an occurrence completes, the next one
#   is queued for the next time of its pattern, and a worker runs it then;
# - an external worker's lease that runs out is requeued by the workers'
#   periodic check (every 10 seconds), not only by the next claim.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";

use AsyncJobsNode;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = AsyncJobsNode->new_node('recur', max_workers => 2);

$node->safe_psql(
	'postgres', q{
	CREATE TABLE ticks (job bigint NOT NULL, at timestamptz NOT NULL);
	CREATE FUNCTION tick(data jsonb) RETURNS void
	LANGUAGE sql AS $$ INSERT INTO ticks VALUES (asyncjobs.current_job(), clock_timestamp()) $$;
	SELECT asyncjobs.register_operation('tick', 'tick(jsonb)');
	SELECT asyncjobs.register_operation('outside');
});

###########################################################################
# recurrence: FREQ=MINUTELY, with the series started 58 seconds ago, so
# that the first occurrence runs now and the second about 2 seconds later
###########################################################################

my $first = $node->safe_psql(
	'postgres', q{
	SELECT asyncjobs.enqueue('tick', recurrence => 'FREQ=MINUTELY',
	                         postpone_until => now() - interval '58 seconds')});
my $start = $node->safe_psql('postgres',
	"SELECT recurrencestarttime FROM asyncjobs.asyncoperation WHERE asyncoperationid = $first");

is($node->wait_for_job('postgres', $first, 10), '30', 'the first occurrence Succeeded');
my $second = $node->safe_psql(
	'postgres', qq{
	SELECT asyncoperationid FROM asyncjobs.job
	 WHERE messagename = 'tick' AND recurrencepattern = 'FREQ=MINUTELY'});
like($second, qr/^\d+$/, 'the next occurrence is queued as a new job');
isnt($second, $first, 'with a new id');
is( $node->safe_psql(
		'postgres', qq{
		SELECT postponeuntil = '$start'::timestamptz + interval '1 minute'
		  FROM asyncjobs.asyncoperation WHERE asyncoperationid = $second}),
	't',
	'it is due one minute after the start of the series');

is($node->wait_for_job('postgres', $second, 15), '30',
	'a worker ran the second occurrence by itself');
is( $node->safe_psql(
		'postgres', qq{
		SELECT (SELECT at FROM ticks WHERE job = $second)
		       >= '$start'::timestamptz + interval '1 minute'}),
	't',
	'not before its time');
is($node->safe_psql('postgres', 'SELECT count(*) FROM ticks'),
	'2', 'each occurrence ran once');

my $third = $node->safe_psql(
	'postgres', qq{
	SELECT asyncoperationid FROM asyncjobs.job
	 WHERE messagename = 'tick' AND recurrencepattern = 'FREQ=MINUTELY'});
like($third, qr/^\d+$/, 'the third occurrence is queued');
is( $node->safe_psql(
		'postgres', qq{
		SELECT postponeuntil = '$start'::timestamptz + interval '2 minutes'
		  FROM asyncjobs.asyncoperation WHERE asyncoperationid = $third}),
	't',
	'two minutes after the start');
is($node->safe_psql('postgres', "SELECT asyncjobs.cancel($third)"),
	't', 'canceling it ...');
is( $node->safe_psql(
		'postgres', q{
		SELECT count(*) FROM asyncjobs.job WHERE messagename = 'tick'}),
	'0',
	'... ends the series');

###########################################################################
# an expired lease, requeued by the workers' periodic check
###########################################################################

my $ext = $node->safe_psql('postgres', q{SELECT asyncjobs.enqueue('outside')});
my $claimed = $node->safe_psql(
	'postgres', q{
	SELECT asyncoperationid FROM asyncjobs.claim(ARRAY['outside'], lease => '1 second',
	                                             worker => 'gone-away')});
is($claimed, $ext, 'an external worker claims the job with a 1-second lease');

# nobody calls claim() again: only the workers can requeue it
ok( $node->poll_until(
		'postgres', qq{
		SELECT statecode = 0 AND retrycount = 1 AND errorcode = 'AJ004'
		  FROM asyncjobs.asyncoperation WHERE asyncoperationid = $ext},
		't', 30),
	'the workers requeued the job once its lease expired');
is( $node->safe_psql(
		'postgres', qq{
		SELECT attempts->0->>'outcome' FROM asyncjobs.asyncoperation
		 WHERE asyncoperationid = $ext}),
	'lease_expired',
	'the lost lease is recorded as an attempt');

$node->stop;
done_testing();
